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

from gan_pipeline.reports.report import HEADLINE, PAGE, html_img, html_table

if TYPE_CHECKING:
    from gan_pipeline.tracking import RunSummary

MAX_STEP_ROWS = 12  # grid rows at most: evenly chosen steps, the first and last included
IMAGE_KEY = "samples"


def matching_steps(steps_per_run: Sequence[Sequence[int]], rows: int = MAX_STEP_ROWS) -> list[int]:
    """The steps that the page shows a row of grids for: every step some run has an image at, thinned to
    `rows` evenly spaced ones (first and last kept) when there are more."""
    steps = sorted({s for steps in steps_per_run for s in steps})
    if len(steps) <= rows:
        return steps
    picks = {round(i * (len(steps) - 1) / (rows - 1)) for i in range(rows)}
    return [steps[i] for i in sorted(picks)]


def image_at(images: dict[int, bytes], step: int) -> tuple[int, bytes] | None:
    """A run's image at `step`, else its last one before it (runs check at other steps); None before its
    first."""
    earlier = [s for s in images if s <= step]
    return (max(earlier), images[max(earlier)]) if earlier else None


def differing_params(runs: Sequence[RunSummary]) -> tuple[list[str], int]:
    """The param keys whose values are not the same in every run (missing counts as a value), and how many
    keys are the same everywhere."""
    keys = sorted({k for run in runs for k in run.params})
    differ = [k for k in keys if len({run.params.get(k) for run in runs}) > 1]
    return differ, len(keys) - len(differ)


def render_comparison(runs: Sequence[RunSummary]) -> str:
    """The page for `runs`, in their order."""
    names = [run.name for run in runs]
    parts = [f"<h2>Runs</h2><p>{len(runs)} MLflow runs: " + ", ".join(
        f"<code>{html.escape(run.name)}</code> ({html.escape(run.run_id)})" for run in runs
    ) + "</p>"]  # fmt: skip
    parts.append("<h2>Headline metrics</h2>")
    rows = [[run.name, *(run.metrics.get(key, "–") for key in HEADLINE)] for run in runs]
    parts.append(html_table(["run", *HEADLINE], rows, "summary"))
    differ, same = differing_params(runs)
    parts.append(f"<h2>Params that differ</h2><p>{same} other params are the same in every run.</p>")
    rows = [[key, *(run.params.get(key, "–") for run in runs)] for key in differ]
    parts.append(html_table(["param", *names], rows, "params"))
    images = [run.images.get(IMAGE_KEY, {}) for run in runs]
    steps = matching_steps([list(i) for i in images])
    parts.append(
        "<h2>Samples over training</h2><p>Each in-training check's grid of the same 100 latents; a run "
        "without a check at a row's step shows its last one before it (its step in the caption).</p>"
    )
    if not steps:
        parts.append(
            f"<p>None of the runs has images <code>{IMAGE_KEY}</code> (monitor.eval_every off?).</p>"
        )
    head = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    body = []
    for step in steps:
        cells = []
        for run, by_step in zip(runs, images, strict=True):
            found = image_at(by_step, step)
            if found is None:
                cells.append("<td>–</td>")
                continue
            at, png = found
            caption = f"step {at}" + ("" if at == step else f" (no check at {step})")
            picture = html_img(png, f"{run.name} step {at}")
            cells.append(f"<td><figure>{picture}<figcaption>{caption}</figcaption></figure></td>")
        body.append(f"<tr><th>step {step}</th>{''.join(cells)}</tr>")
    parts.append(f'<table class="grids"><tr><th>step</th>{head}</tr>{"".join(body)}</table>')
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
