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


def render_report(experiments: Sequence[str], metrics_dir: Path, samples_dir: Path, plots_dir: Path) -> str:
    """The report page for `experiments`, from `<metrics_dir>/<exp>.json`, `<samples_dir>/<exp>/grid.png`
    and `<plots_dir>/<exp>/train_log.csv` (and `<metrics_dir>/classifier.json`,
    `<metrics_dir>/info/<exp>.json` and `<plots_dir>/<exp>/class_histogram.csv` when present)."""
    metrics = {exp: read_json(metrics_dir / f"{exp}.json") for exp in experiments}
    parts = ["<h2>Metrics</h2>"]
    rows = [[exp, *(metrics[exp].get(key, "–") for key in HEADLINE)] for exp in experiments]
    parts.append(html_table(["experiment", *HEADLINE], rows, "summary"))
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


def write_report(path: str | Path, experiments: Sequence[str], **dirs: Path) -> None:
    """Render the report (see `render_report`) and write it atomically."""
    write_text(path, render_report(experiments, **dirs))
