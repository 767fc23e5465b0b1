"""One self-contained `reports/index.html` for people who do not run the MLflow UI: a table comparing the
experiments' headline metrics, then per experiment its sample grid, loss curves, full metrics table (with
the sample sizes from its info file) and class histogram. Images are embedded as data URIs, so the file can
be mailed or uploaded as a CI artifact on its own."""

from __future__ import annotations

import base64
import csv
import html
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gan_pipeline.errors import DataError
from gan_pipeline.io import read_json, write_text
from gan_pipeline.plots import plot_training

# Columns of the comparison table, in the order people read them; missing ones show as "–".
HEADLINE = (
    "fid_inception",
    "fid_classifier",
    "kid_classifier",
    "coverage",
    "kl_from_uniform",
    "prdc_classifier_precision",
    "prdc_classifier_recall",
    "label_accuracy",
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{heading}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
section {{ border-top: 2px solid #888; margin-top: 2em; }}
.images {{ display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; }}
figure {{ margin: 0; }}
figure img {{ height: 340px; image-rendering: pixelated; }}
</style>
</head>
<body>
<h1>{heading}</h1>
{body}
</body>
</html>
"""


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found (run the stage that writes it first)")
    return path


def read_log(path: Path) -> list[dict[str, float]]:
    """A numeric CSV log (header, then one row per step) as dicts of floats."""
    return [{k: float(v) for k, v in row.items()} for row in _read_csv(_existing(path))]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def html_img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def matching_steps(steps_per_run: Sequence[Sequence[int]], rows: int) -> list[int]:
    """The steps that a page shows a row of grids for: every step some run has an image at, thinned to
    `rows` evenly spaced ones (first and last kept) when there are more."""
    steps = sorted({s for steps in steps_per_run for s in steps})
    if len(steps) <= rows:
        return steps
    picks = {round(i * (len(steps) - 1) / (rows - 1)) for i in range(rows)}
    return [steps[i] for i in sorted(picks)]


def image_at(images: Mapping[int, bytes], step: int) -> tuple[int, bytes] | None:
    """A run's image at `step`, else its last one before it (runs check at other steps); None before its
    first."""
    earlier = [s for s in images if s <= step]
    return (max(earlier), images[max(earlier)]) if earlier else None


def differing_params(params: Sequence[Mapping[str, Any]]) -> tuple[list[str], int]:
    """The keys whose values are not the same in every one of `params` (missing counts as a value), and
    how many keys are the same everywhere."""
    keys = sorted({k for p in params for k in p})
    differ = [k for k in keys if len({str(p.get(k)) for p in params}) > 1]
    return differ, len(keys) - len(differ)


def _param(params: Mapping[str, Any], key: str) -> Any:
    """A param's value as params.yaml writes it (null, not None); "–" where it is missing."""
    value = params.get(key, "–")
    return "null" if value is None else value


def side_by_side(what: str, names: Sequence[str], metrics: Sequence[Mapping[str, Any]],
                 params: Sequence[Mapping[str, Any]], images: Sequence[Mapping[int, bytes]],
                 rows: int) -> list[str]:  # fmt: skip
    """The comparison of runs or experiments `names` (`what` they are, for the first column): their
    headline metrics, the params that differ, and their sample grids over training (`images`: step ->
    PNG) at up to `rows` matching steps."""
    parts = ["<h2>Headline metrics</h2>"]
    table = [[name, *(m.get(key, "–") for key in HEADLINE)] for name, m in zip(names, metrics, strict=True)]
    parts.append(html_table([what, *HEADLINE], table, "summary"))
    differ, same = differing_params(params)
    parts.append(f"<h2>Params that differ</h2><p>{same} other params are the same in every {what}.</p>")
    table = [[key, *(_param(p, key) for p in params)] for key in differ]
    parts.append(html_table(["param", *names], table, "params"))
    parts.append(
        f"<h2>Samples over training</h2><p>Each in-training check's grid of the same 100 latents; "
        f"{'an' if what[0] in 'aeiou' else 'a'} {what} "
        "without a check at a row's step shows its last one before it (its step in the caption).</p>"
    )
    head = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    body = []
    for step in matching_steps([list(i) for i in images], rows):
        cells = []
        for name, by_step in zip(names, images, strict=True):
            found = image_at(by_step, step)
            if found is None:
                cells.append("<td>–</td>")
                continue
            at, png = found
            caption = f"step {at}" + ("" if at == step else f" (no check at {step})")
            picture = html_img(png, f"{name} step {at}")
            cells.append(f"<td><figure>{picture}<figcaption>{caption}</figcaption></figure></td>")
        body.append(f"<tr><th>step {step}</th>{''.join(cells)}</tr>")
    parts.append(f'<table class="grids"><tr><th>step</th>{head}</tr>{"".join(body)}</table>')
    return parts


def _loss_plot_png(log: Path, title: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "losses.png"
        plot_training(read_log(log), title, path)
        return path.read_bytes()


def _experiment_tables(exp: str, metrics: Mapping[str, Any], metrics_dir: Path, plots_dir: Path) -> str:
    """The metrics table of `exp`, its sample sizes from `<metrics_dir>/info/<exp>.json` below them, and its
    class histogram from `<plots_dir>/<exp>/class_histogram.csv` (when each is present)."""
    rows = sorted(metrics.items())
    info = metrics_dir / "info" / f"{exp}.json"
    if info.exists():
        rows += sorted(read_json(info).get("sample_sizes", {}).items())
    tables = html_table(["metric", "value"], rows, "metrics")
    histogram = plots_dir / exp / "class_histogram.csv"
    if histogram.exists():
        classes = _read_csv(histogram)
        header = list(classes[0]) if classes else ["digit", "count"]
        tables += html_table(header, [[row[k] for k in header] for row in classes], "classes")
    return tables


STEP_ROWS = 8  # rows of the index page's grids over training (the comparison page of runs shows more)
STEP_GRIDS = "samples_over_steps"  # <plots_dir>/<exp>/<this>/step_<step>.png, the train stage's


def step_grids(folder: Path) -> dict[int, bytes]:
    """The in-training checks' grids in `folder` (step_<step>.png) by step; none when it is missing."""
    found = folder.glob("step_*.png") if folder.is_dir() else []
    return {int(p.stem[5:]): p.read_bytes() for p in found if p.stem[5:].isdigit()}


def render_report(experiments: Sequence[str], metrics_dir: Path, samples_dir: Path, plots_dir: Path,
                  params: Mapping[str, Mapping[str, Any]] | None = None) -> str:  # fmt: skip
    """The report page for `experiments`, from `<metrics_dir>/<exp>.json`, `<samples_dir>/<exp>/grid.png`
    and `<plots_dir>/<exp>/train_log.csv` (and `<metrics_dir>/classifier.json`,
    `<metrics_dir>/info/<exp>.json`, `<plots_dir>/<exp>/class_histogram.csv` and the check grids
    `<plots_dir>/<exp>/samples_over_steps/` when present). It opens with the experiments side by side:
    headline metrics, the params that differ (`params`: each experiment's, as flat keys) and the grids
    over training at matching steps."""
    metrics = {exp: read_json(metrics_dir / f"{exp}.json") for exp in experiments}
    parts = side_by_side(
        "experiment",
        experiments,
        [metrics[exp] for exp in experiments],
        [(params or {}).get(exp, {}) for exp in experiments],
        [step_grids(plots_dir / exp / STEP_GRIDS) for exp in experiments],
        STEP_ROWS,
    )
    parts.append(
        "<p>Other runs or DVC experiments (a <code>dvc exp run --queue</code> sweep, say) side by side: "
        "<code>python -m gan_pipeline.reports.compare dvc:&lt;experiment&gt; dvc:&lt;experiment&gt;</code> "
        "(or MLflow run ids or names) writes this comparison of their MLflow runs to "
        "<code>reports/compare.html</code>.</p>"
    )
    classifier = metrics_dir / "classifier.json"
    if classifier.exists():
        parts.append(
            "<p>The <code>_classifier</code> metrics are computed in the digit classifier's features, "
            "<code>fid_inception</code> in the standard TF Inception's; the classifier:</p>"
        )
        parts.append(html_table(["metric", "value"], list(read_json(classifier).items()), "classifier"))
    for exp in experiments:
        grid = _existing(samples_dir / exp / "grid.png").read_bytes()
        losses = _loss_plot_png(plots_dir / exp / "train_log.csv", exp)
        parts.append(
            f'<section id="{html.escape(exp)}"><h2>{html.escape(exp)}</h2><div class="images">'
            f"<figure>{html_img(grid, f'{exp} samples')}<figcaption>samples</figcaption></figure>"
            f"<figure>{html_img(losses, f'{exp} losses')}<figcaption>training</figcaption></figure></div>"
            + _experiment_tables(exp, metrics[exp], metrics_dir, plots_dir)
            + "</section>"
        )
    return PAGE.format(heading=f"gan-pipeline: {len(experiments)} experiments", body="\n".join(parts))


def write_report(path: str | Path, experiments: Sequence[str], **inputs: Any) -> None:
    """Render the report (`render_report` of `inputs`: its folders and params) and write it atomically."""
    write_text(path, render_report(experiments, **inputs))
