"""What people look at (the reports), checked in a real browser (headless Chromium) on a copy of the
reproduced project: `dvc plots show` (rendered offline from our template), reports/index.html and the
MLflow UI. Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from browser import CHROMIUM, Browser
from mlflow.tracking import MlflowClient
from PIL import Image
from pipeline_helpers import EXPERIMENTS, REPO, clone_reproduced, mlflow_server, run

from gan_pipeline.errors import DataError
from gan_pipeline.models import GAN_MODELS
from gan_pipeline.reports.report import render_report

ARTIFACTS = REPO / "tests" / "artifacts"
PLOT_FILES = {
    "losses": "train_log.csv",
    "discriminator": "train_log.csv",
    "coverage": "eval_log.csv",
    "monitor_fid": "eval_log.csv",
    "class_histogram": "class_histogram.csv",
}
# Drawn for the conditional experiments only: their class_histogram.csv has a fid_classifier column.
CONDITIONAL_PLOT_FILES = {"fid_per_class": "class_histogram.csv"}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; in CI `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed: `apt-get install chromium` to run the browser checks")
    with Browser() as browser:
        yield browser


def screenshot(browser: Browser, name: str) -> Path:
    """A PNG of the viewport in tests/artifacts/<name>, checked to show more than a blank page."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = browser.screenshot(ARTIFACTS / name)
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank"
    return path


def test_report_renders_a_table_per_experiment_and_names_a_missing_file(tmp_path):
    for exp, fid in (("a", 12.5), ("b", 250.0)):
        (tmp_path / "samples" / exp).mkdir(parents=True)
        Image.new("L", (30, 30), 128).save(tmp_path / "samples" / exp / "grid.png")
        (tmp_path / "plots" / exp).mkdir(parents=True)
        rows = ["step,epoch,loss_d,loss_g,d_real,d_fake", "5,1,1.2,0.8,0.6,0.4", "10,1,1.1,0.9,0.55,0.45"]
        (tmp_path / "plots" / exp / "train_log.csv").write_text("\n".join(rows) + "\n")
        (tmp_path / "metrics" / "info").mkdir(parents=True, exist_ok=True)
        (tmp_path / "metrics" / f"{exp}.json").write_text(json.dumps({"fid_classifier": fid, "coverage": 7}))
    info = {"sample_sizes": {"fid_classifier_n_fake": 200}, "environment": {"device": "cpu"}}
    (tmp_path / "metrics" / "info" / "a.json").write_text(json.dumps(info))
    histogram = ["digit,count,fid_classifier"] + [f"{d},{10 + d},{40.5 + d}" for d in range(10)]
    (tmp_path / "plots" / "a" / "class_histogram.csv").write_text("\n".join(histogram) + "\n")
    dirs = {
        "metrics_dir": tmp_path / "metrics",
        "samples_dir": tmp_path / "samples",
        "plots_dir": tmp_path / "plots",
    }
    page = render_report(["a", "b"], **dirs)
    assert "<tr><td>a</td><td>–</td><td>12.5</td><td>–</td><td>7</td>" in page  # no fid_inception here
    assert "<tr><td>b</td><td>–</td><td>250</td>" in page
    section_a = page[page.index('<section id="a">') : page.index('<section id="b">')]
    assert "<tr><td>fid_classifier_n_fake</td><td>200</td></tr>" in section_a
    assert "<tr><th>digit</th><th>count</th><th>fid_classifier</th></tr>" in section_a
    assert "<tr><td>9</td><td>19</td><td>49.5</td></tr>" in section_a
    assert "fid_classifier_n_fake" not in page[page.index('<section id="b">') :]  # b has no info file
    assert page.count("data:image/png;base64,") == 4
    (tmp_path / "samples" / "b" / "grid.png").unlink()
    with pytest.raises(DataError, match=r"samples/b/grid.png: file not found"):
        render_report(["a", "b"], **dirs)


def test_the_report_opens_with_the_experiments_side_by_side_params_and_grids_at_matching_steps(tmp_path):
    """Headline metrics, the params that differ between the experiments (the rest counted), and each
    check's grid (plots/<exp>/samples_over_steps/step_<step>.png) in rows of matching steps; an
    experiment without a check at a row's step shows its last one before it, or "–"."""
    grays = {("a", 10): 40, ("a", 20): 80, ("b", 15): 160}
    for exp in ("a", "b"):
        (tmp_path / "samples" / exp).mkdir(parents=True)
        Image.new("L", (30, 30), 128).save(tmp_path / "samples" / exp / "grid.png")
        (tmp_path / "plots" / exp / "samples_over_steps").mkdir(parents=True)
        (tmp_path / "plots" / exp / "train_log.csv").write_text(
            "step,epoch,loss_d,loss_g,d_real,d_fake\n5,1,1.2,0.8,0.6,0.4\n"
        )
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{exp}.json").write_text(json.dumps({"fid_inception": 40.5}))
    for (exp, step), gray in grays.items():
        Image.new("L", (120, 120), gray).save(
            tmp_path / "plots" / exp / "samples_over_steps" / f"step_{step:07d}.png"
        )
    params = {"a": {"train.lr": 0.0002, "train.epochs": 9}, "b": {"train.lr": 0.001, "train.epochs": 9}}
    page = render_report(["a", "b"], tmp_path / "metrics", tmp_path / "samples", tmp_path / "plots", params)
    assert "<tr><td>train.lr</td><td>0.0002</td><td>0.001</td></tr>" in page
    assert "1 other params are the same in every experiment" in page and "<td>train.epochs</td>" not in page
    grids = page[page.index('<table class="grids">') :]
    grids = grids[: grids.index("</table>")]
    rows = grids.split("<tr><th>step ")[1:]
    assert [row.split("</th>")[0] for row in rows] == ["10", "15", "20"]
    assert (
        "<td>–</td>" in rows[0]
        and "step 10 (no check at 15)" in rows[1]
        and "step 15</figcaption>" in rows[1]
    )
    assert "step 15 (no check at 20)" in rows[2]
    assert grids.count('src="data:image/png;base64,') == 5
    assert page.index('<table class="grids">') < page.index('<section id="a">')  # the page opens with it


@pytest.fixture(scope="module")
def project(reproduced_project, tmp_path_factory) -> Path:
    """The reproduced project with a log of five in-training checks per experiment (the monitor's columns
    that the plots draw)."""
    repo = clone_reproduced(reproduced_project[0], tmp_path_factory.mktemp("reports"))
    for i, exp in enumerate(EXPERIMENTS):
        with open(repo / "plots" / exp / "eval_log.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "epoch", "coverage", "kl_from_uniform", "fid_classifier"])
            for epoch in range(1, 6):
                writer.writerow(
                    [epoch * 16, epoch, min(10, 2 * epoch + i), 2.3 / (epoch + i), 90 / epoch + i]
                )
    return repo


def test_plots_definitions_cover_every_experiment():
    experiments = yaml.safe_load((REPO / "params.yaml").read_text())["experiments"]
    conditional = {exp for exp, e in experiments.items() if GAN_MODELS[e["model"]["name"]].conditional}
    entries = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    grids = {p for p in entries if isinstance(p, str)}  # image plots: each experiment's grid and checks'
    assert grids == {f"samples/{exp}/grid.png" for exp in experiments} | {
        f"plots/{exp}/samples_over_steps" for exp in experiments
    }
    plots = {k: v for p in entries if isinstance(p, dict) for k, v in p.items()}
    assert set(plots) == set(PLOT_FILES) | set(CONDITIONAL_PLOT_FILES)
    for files, drawn in ((PLOT_FILES, set(experiments)), (CONDITIONAL_PLOT_FILES, conditional)):
        for plot_id, log in files.items():
            assert set(plots[plot_id]["y"]) == {f"plots/{exp}/{log}" for exp in drawn}, plot_id


@pytest.fixture(scope="module")
def plots_html(project) -> Path:
    out = project / "dvc_plots"
    run(["dvc", "plots", "show", "-o", str(out)], project)
    return out / "index.html"


def test_dvc_plots_html_loads_nothing_from_the_network(plots_html):
    page = plots_html.read_text()
    assert "vegaEmbed" in page and "Losses: D and G" in page
    assert not re.search(r"<script[^>]+src=", page)
    assert "cdn.jsdelivr.net" not in page


def test_dvc_plots_render_in_chromium(plots_html, browser):
    browser.resize(1400, 1300)
    browser.goto(plots_html.as_uri())
    # ours and nothing else (no stage-level plot adds a chart of a log's last column), and the grids
    ours = len(PLOT_FILES) + len(CONDITIONAL_PLOT_FILES)
    browser.wait_for(f"document.querySelectorAll('svg.marks').length === {ours}")
    # each experiment's grid and each of its checks' grids
    checks = sum(len(list((plots_html.parents[1] / "plots" / exp / "samples_over_steps").glob("*.png")))
                 for exp in EXPERIMENTS)  # fmt: skip
    assert checks >= len(EXPERIMENTS)
    grids = "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 100).length"
    browser.wait_for(f"{grids} === {len(EXPERIMENTS) + checks}")
    charts = browser.js(
        "Array.from(document.querySelectorAll('div.vega-embed')).map(div => ({id: div.id,"
        " width: +div.querySelector('svg.marks').getAttribute('width'), text: div.textContent,"
        " lines: div.querySelectorAll('.mark-line path[d*=L]').length,"
        " bars: div.querySelectorAll('.mark-rect path').length}))"
    )
    by_id = {chart["id"]: chart for chart in charts}
    assert all(chart["width"] > 100 and chart["lines"] + chart["bars"] >= 1 for chart in charts), charts
    n = len(EXPERIMENTS)
    expected = {"losses": (2 * n, "Losses: D and G"), "discriminator": (2 * n, "D(x) and D(G(z))")}
    expected["coverage"] = (n, "Coverage over training")
    expected["monitor_fid"] = (n, "fid_classifier over training")
    for plot_id, (lines, title) in expected.items():
        assert by_id[plot_id]["lines"] >= lines and title in by_id[plot_id]["text"], by_id[plot_id]
    # each experiment's curves in a colour of their own: one stroke colour per experiment and curve
    colours = browser.js(
        "new Set(Array.from(document.querySelectorAll('div.vega-embed#losses .mark-line path'))"
        ".map(p => p.getAttribute('stroke'))).size"
    )
    assert colours == 2 * n
    for exp in EXPERIMENTS:
        assert f"{exp} loss_d" in by_id["losses"]["text"] and f"{exp} coverage" in by_id["coverage"]["text"]
    # one bar per digit and experiment; per-class FID for the conditional cgan only
    assert (
        by_id["class_histogram"]["bars"] == 10 * n and "Samples per digit" in by_id["class_histogram"]["text"]
    )
    assert by_id["fid_per_class"]["bars"] == 10 and "Intra-class FID" in by_id["fid_per_class"]["text"]
    assert "loss_d" in by_id["losses"]["text"] and "d_fake" in by_id["discriminator"]["text"]
    screenshot(browser, "dvc_plots.png")


def test_report_has_each_experiments_grid_losses_and_metrics(project, browser):
    report = project / "reports" / "index.html"
    page = report.read_text()
    for exp in EXPERIMENTS:
        section = page[page.index(f'<section id="{exp}">') :]
        section = section[: section.index("</section>")]
        assert section.count('src="data:image/png;base64,') == 2, exp
        fid = json.loads((project / "metrics" / f"{exp}.json").read_text())["fid_classifier"]
        assert f"<td>fid_classifier</td><td>{fid:.4g}</td>" in section
    assert "http" not in page.replace("http-equiv", "")
    # each experiment's grid and loss plot, and the grids over training side by side at the top
    assert page.index('<table class="grids">') < page.index("<section")
    assert page.count("<figcaption>step ") >= len(EXPERIMENTS)
    browser.resize(1400, 1200)
    _screenshot_with_images(browser, report, page.count("data:image/png;base64,"), "report.png")


def _screenshot_with_images(browser: Browser, page: Path, images: int, name: str) -> None:
    """Open `page` and save a screenshot as `name` once its `images` pictures (over 100 px wide) loaded."""
    browser.goto(page.as_uri())
    loaded = "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 100).length"
    browser.wait_for(f"{loaded} === {images}")
    screenshot(browser, name)


def test_mlflow_ui_lists_the_runs_with_a_metric_column(project, browser):
    experiment_id = (
        MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        .get_experiment_by_name("gan-pipeline")
        .experiment_id
    )
    fids = {
        exp: json.loads((project / "metrics" / f"{exp}.json").read_text())["fid_classifier"]
        for exp in EXPERIMENTS
    }
    args = ["ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}"]
    with mlflow_server(args, project) as url:
        browser.resize(1800, 700)
        browser.goto(f"{url}/#/experiments/{experiment_id}/runs")
        names = " && ".join(f"document.body.innerText.includes('{exp}')" for exp in EXPERIMENTS)
        browser.wait_for(names)
        # as a user would: sort by fid_classifier, which shows it as a column
        browser.click('[data-testid="sort-select-dropdown"]')
        browser.click('[data-testid="sort-select-fid_classifier"]')
        column = (
            "Array.from(document.querySelectorAll('[role=gridcell][col-id=\"metrics.`fid_classifier`\"]'))"
        )
        cells = browser.wait_for(f"{column}.length === {len(EXPERIMENTS)} && {column}.map(c => +c.innerText)")
        assert sorted(cells) == pytest.approx(sorted(fids.values()))
        browser.wait_for("!document.querySelector('[class*=spin-spinning]')")  # the re-sorted rows loaded
        header = browser.js(
            "Array.from(document.querySelectorAll('[role=columnheader]')).map(h => h.innerText)"
        )
        assert "fid_classifier" in header
        if browser.js("document.querySelector('button[aria-label=Close]') !== null"):
            browser.click("button[aria-label=Close]")  # the MLflow Assistant's side panel
        browser.js(
            "document.querySelector('[role=columnheader][col-id=\"metrics.`fid_classifier`\"]').scrollIntoView()"
        )
        screenshot(browser, "mlflow_ui.png")


def _runs_to_compare(root: Path, monkeypatch) -> list[str]:
    """Two runs in a real local store, as the train stage makes them: cgan with lr 2e-4 checked at steps
    100, 200, 300 and lr 1e-3 checked at 100 and 250, each check's grid a different gray."""
    from gan_pipeline import tracking
    from gan_pipeline.config import TrackingConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = TrackingConfig(experiment_name="gan-pipeline", retries=1, retry_backoff_s=1)
    ids = []
    for lr, steps, fid in (("0.0002", (100, 200, 300), 79.1), ("0.001", (100, 250), 120.5)):
        params = {"train.lr": lr, "train.epochs": 130, "model.name": "cgan"}
        with tracking.run(cfg, f"cgan-lr{lr}", params, {"dvc_exp_name": f"lr-{lr}"}, root=root) as run:
            for step in steps:
                run.log_image("samples", np.full((120, 120), step // 2, dtype=np.uint8), step)
            run.log_metrics({"fid_inception": fid, "coverage": 10}, step=steps[-1])
        ids.append(run.id)
    return ids


def test_the_comparison_page_puts_the_runs_grids_at_matching_steps_side_by_side(tmp_path, monkeypatch):
    from gan_pipeline.reports.compare import main

    first, second = _runs_to_compare(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    main(["cgan-lr0.0002", "dvc:lr-0.001", "--out", "compare.html"])  # by run name, by DVC experiment
    page = (tmp_path / "compare.html").read_text()
    assert first in page and second in page
    assert "<tr><td>cgan-lr0.0002</td><td>79.1</td>" in page and "<td>120.5</td>" in page
    # the one param that differs, with both values; the two that agree are only counted
    assert "<tr><td>train.lr</td><td>0.0002</td><td>0.001</td></tr>" in page
    assert "2 other params are the same in every run" in page and "<td>train.epochs</td>" not in page
    grids = page[page.index('<table class="grids">') :]
    assert [row.split("</th>")[0] for row in grids.split("<tr><th>")[2:]] == [
        "step 100", "step 200", "step 250", "step 300"
    ]  # fmt: skip
    assert "step 100</figcaption>" in grids and "step 250 (no check at 300)" in grids  # its last before
    assert grids.count('src="data:image/png;base64,') == 8
    with pytest.raises(DataError, match=r"no run of experiment 'gan-pipeline' is 'nope'"):
        main(["nope", "--out", "compare.html"])


def test_the_comparison_page_renders_in_chromium(tmp_path, monkeypatch, browser):
    from gan_pipeline import tracking
    from gan_pipeline.reports.compare import render_comparison

    ids = _runs_to_compare(tmp_path, monkeypatch)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    page = tmp_path / "compare.html"
    page.write_text(render_comparison([tracking.run_summary(uri, run_id) for run_id in ids]))
    browser.resize(1400, 1100)
    _screenshot_with_images(browser, page, 8, "compare.png")


def test_mlflow_ui_shows_the_champion_alias_and_each_runs_samples_over_steps(project, browser):
    """The registry page of a reproduced project lists cgan's version with its `@ champion` alias, and the
    runs' chart view draws each run's image `samples` (the in-training check's grid; a step slider when
    there are several checks)."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).get_experiment_by_name("gan-pipeline").experiment_id
    with mlflow_server(["ui", "--backend-store-uri", uri], project) as url:
        browser.resize(1600, 900)
        browser.goto(f"{url}/#/models/gan-pipeline-cgan")
        browser.wait_for("document.body.innerText.includes('champion')")  # the alias tag: @ champion
        if browser.js("document.querySelector('button[aria-label=Close]') !== null"):
            browser.click("button[aria-label=Close]")  # the MLflow Assistant's side panel
        screenshot(browser, "mlflow_registry.png")
        browser.goto(f"{url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART")
        scroll = (  # the charts render as they scroll into view
            "document.querySelectorAll('*').forEach(e => {"
            " if (e.scrollHeight > e.clientHeight + 50) e.scrollTop = e.scrollHeight; })"
        )
        grids = (
            "Array.from(document.images).filter(i => i.src.includes('samples%2Bstep%2B')"
            " && i.complete && i.naturalWidth > 0)"
        )
        browser.wait_for(f"({scroll}, {grids}.length >= {len(EXPERIMENTS)})")
        browser.js(f"{grids}[0].scrollIntoView()")
        screenshot(browser, "mlflow_images_over_steps.png")
