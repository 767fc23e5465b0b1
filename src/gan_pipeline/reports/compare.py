"""A comparison page of MLflow runs, the thing the MLflow UI does not draw: the runs' sample grids at
matching training steps side by side (each in-training check's 10x10 grid of the same latents, the run's
image `samples` over steps), the params that differ between them, and their headline metrics.

    python -m gan_pipeline.reports.compare RUN RUN [RUN ...] [--out reports/compare.html]

RUN is an MLflow run id, a run name (`cgan-1a2b3c4`, as the train stage names its runs) or
`dvc:<DVC experiment name>` (every run that DVC experiment made, e.g. one per GAN of a `dvc exp run`). The
store is MLFLOW_TRACKING_URI, else the repository's `mlflow.db`. The page is self-contained (images as data
URIs), like reports/index.html.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gan_pipeline.reports.report import PAGE, side_by_side

if TYPE_CHECKING:
    from gan_pipeline.tracking import RunSummary

MAX_STEP_ROWS = 12  # grid rows at most: evenly chosen steps, the first and last included
IMAGE_KEY = "samples"


def render_comparison(runs: Sequence[RunSummary]) -> str:
    """The page for `runs`, in their order."""
    names = [run.name for run in runs]
    parts = [f"<h2>Runs</h2><p>{len(runs)} MLflow runs: " + ", ".join(
        f"<code>{html.escape(run.name)}</code> ({html.escape(run.run_id)})" for run in runs
    ) + "</p>"]  # fmt: skip
    images = [run.images.get(IMAGE_KEY, {}) for run in runs]
    parts += side_by_side(
        "run", names, [run.metrics for run in runs], [run.params for run in runs], images, MAX_STEP_ROWS
    )
    if not any(images):
        parts.append(
            f"<p>None of the runs has images <code>{IMAGE_KEY}</code> (monitor.eval_every off?).</p>"
        )
    return PAGE.format(heading=f"gan-pipeline: {len(runs)} runs compared", body="\n".join(parts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gan_pipeline.reports.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="run id, run name or dvc:<DVC experiment name>")
    parser.add_argument("--out", type=Path, default=Path("reports/compare.html"), help="HTML file to write")
    parser.add_argument("--params", default="params.yaml", help="params file (tracking.experiment_name)")
    args = parser.parse_args(argv)
    # MLflow loads after parsing, so that --help answers at once.
    from gan_pipeline import tracking
    from gan_pipeline.config import load_params
    from gan_pipeline.io import write_text

    uri = tracking.tracking_uri(tracking.repo_root())
    name = load_params(args.params).tracking.experiment_name
    ids = list(dict.fromkeys(i for selector in args.runs for i in tracking.find_runs(uri, name, selector)))
    write_text(args.out, render_comparison([tracking.run_summary(uri, run_id) for run_id in ids]))
    print(f"wrote {args.out} ({len(ids)} runs)")


if __name__ == "__main__":
    from gan_pipeline.cli import run_stage
    from gan_pipeline.errors import exit_on_error

    run_stage(exit_on_error(main))
