"""report: write one self-contained HTML page with every experiment's sample grid, loss curves and
metrics (the experiments are those in params.yaml), for people who do not run the MLflow UI."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    from gan_pipeline.config import load_params
    from gan_pipeline.reports.report import write_report

    experiments = list(load_params(args.params).experiments)
    write_report(
        args.out, experiments, metrics_dir=args.metrics, samples_dir=args.samples, plots_dir=args.plots
    )
    print(f"wrote {args.out} ({len(experiments)} experiments)")


if __name__ == "__main__":
    run_stage(main)
