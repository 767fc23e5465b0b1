"""The views people look at, checked in a real browser (headless Chromium) on a copy of the reproduced
project: `dvc plots show` (rendered offline from our template), reports/index.html and the MLflow UI.
Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from pipeline_helpers import EXPERIMENTS, REPO, clone_reproduced, mlflow_server, run

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOT_FILES = {"losses": "train_log.csv", "discriminator": "train_log.csv", "coverage": "eval_log.csv"}


def chromium(url: str, tmp_path: Path, *args: str) -> str:
    """Load `url` in headless Chromium, let its scripts run, and return stdout (the DOM with --dump-dom)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; in CI `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed: `apt-get install chromium` to run the browser checks")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += [f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def screenshot(url: str, tmp_path: Path, name: str, size: str = "1400,1800") -> Path:
    """A PNG of the page in tests/artifacts/<name>, checked to show more than a blank page."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    chromium(url, tmp_path, f"--screenshot={path}", f"--window-size={size}")
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank"
    return path


@pytest.fixture(scope="module")
def project(reproduced_project, tmp_path_factory) -> Path:
    """The reproduced project with a coverage log per experiment in the mode-collapse monitor's schema."""
    repo = clone_reproduced(reproduced_project[0], tmp_path_factory.mktemp("views"))
    for i, exp in enumerate(EXPERIMENTS):
        with open(repo / "plots" / exp / "eval_log.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "epoch", "coverage", "kl_from_uniform"])
            for epoch in range(1, 6):
                writer.writerow([epoch * 16, epoch, min(10, 2 * epoch + i), 2.3 / (epoch + i)])
    return repo


def test_plots_definitions_cover_every_experiment():
    experiments = yaml.safe_load((REPO / "params.yaml").read_text())["experiments"]
    plots = {k: v for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"] for k, v in p.items()}
    assert set(plots) == set(PLOT_FILES)
    for plot_id, log in PLOT_FILES.items():
        assert set(plots[plot_id]["y"]) == {f"plots/{exp}/{log}" for exp in experiments}, plot_id


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


def test_dvc_plots_render_in_chromium(plots_html, tmp_path):
    dom = chromium(plots_html.as_uri(), tmp_path, "--dump-dom")
    charts = re.findall(r'<svg class="marks" width="(\d+)" height="(\d+)"', dom)
    # our three, and the train stage's own plot of each train_log.csv
    assert len(charts) >= 3 + len(EXPERIMENTS), dom[-2000:]
    assert all(int(w) > 100 and int(h) > 100 for w, h in charts)
    for title in ("Losses: D and G", "D(x) and D(G(z))", "Coverage over training"):
        assert title in dom
    lines = re.findall(r'<path[^>]* d="M[^"]*"', dom)
    assert len(lines) >= 3 * 2 * len(
        EXPERIMENTS
    )  # each experiment's loss_d, loss_g, d_real, d_fake, coverage
    assert "loss_d" in dom and "d_fake" in dom and "coverage" in dom
    screenshot(plots_html.as_uri(), tmp_path, "dvc_plots.png", "1400,2200")


def test_report_has_each_experiments_grid_losses_and_metrics(project, tmp_path):
    page = (project / "reports" / "index.html").read_text()
    for exp in EXPERIMENTS:
        section = page[page.index(f'<section id="{exp}">') :]
        section = section[: section.index("</section>")]
        assert section.count('src="data:image/png;base64,') == 2, exp
        fid = json.loads((project / "metrics" / f"{exp}.json").read_text())["fid_classifier"]
        assert f"<td>fid_classifier</td><td>{fid:.4g}</td>" in section
    assert "http" not in page.replace("http-equiv", "")
    dom = chromium((project / "reports" / "index.html").as_uri(), tmp_path, "--dump-dom")
    assert dom.count("<img") == 2 * len(EXPERIMENTS)
    screenshot((project / "reports" / "index.html").as_uri(), tmp_path, "report.png", "1400,1400")


def test_mlflow_ui_lists_the_runs_with_a_metric_column(project, tmp_path):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("gan-pipeline").experiment_id
    args = ["ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}"]
    with mlflow_server(args, project) as url:
        page = f"{url}/#/experiments/{experiment_id}"
        dom = chromium(page, tmp_path, "--dump-dom")
        for exp in EXPERIMENTS:
            assert f">{exp}<" in dom, exp
        assert "fid_classifier" in dom
        screenshot(page, tmp_path, "mlflow_ui.png", "1600,1000")
