"""report: write one self-contained HTML page for people who do not run the MLflow UI: the experiments of
params.yaml side by side (headline metrics, the params that differ, the in-training checks' sample grids at
matching steps), then each one's sample grid, loss curves and metrics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This checkout's own package first: the editable install points at the workspace's src/, which a
# `dvc exp run --temp/--queue` copy must not run (README, "Sweeps with the DVC queue").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gan_pipeline.cli import run_stage
from gan_pipeline.errors import exit_on_error


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (experiments section)")
    parser.add_argument("--metrics", type=Path, required=True, help="folder with <experiment>.json")
    parser.add_argument("--samples", type=Path, required=True, help="folder with <experiment>/grid.png")
    parser.add_argument("--plots", type=Path, required=True, help="folder with <experiment>/train_log.csv")
    parser.add_argument("--out", type=Path, required=True, help="HTML file to write")
    args = parser.parse_args(argv)
    # matplotlib loads after parsing, so that --help answers at once.
    from gan_pipeline.config import experiment, flatten, load_params
    from gan_pipeline.reports.report import write_report

    params = load_params(args.params)
    experiments = list(params.experiments)
    flat = {name: flatten(experiment(params, name)) for name in experiments}
    write_report(
        args.out,
        experiments,
        metrics_dir=args.metrics,
        samples_dir=args.samples,
        plots_dir=args.plots,
        params=flat,
    )
    print(f"wrote {args.out} ({len(experiments)} experiments)")


if __name__ == "__main__":
    run_stage(main)
