"""The users' retrain loop, run for real in a copy of the reproduced project: CI's script
(scripts/retrain_report.sh) after a one-param change, and a queued sweep with two workers."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pipeline_helpers import clone_reproduced, commit, experiment_stages, ran_stages, run, set_params

from gan_pipeline.reports.retrain import changed_experiments, stages_by_outcome

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SWEEP = (0.0001, 0.001)  # one round of the two workers: a sweep, kept short for the suite


def test_stages_by_outcome_reads_dvc_repro_output():
    output = "\n".join(
        [
            "Stage 'prepare' didn't change, skipping",
            "Running stage 'train@cgan':",
            "> python stages/train.py --experiment cgan",
            "Stage 'train@mlp_gan' is cached - skipping run, checking out outputs",
            "Running stage 'report':",
        ]
    )
    outcomes = stages_by_outcome(output)
    assert outcomes == {
        "ran": ["train@cgan", "report"],
        "restored": ["train@mlp_gan"],
        "unchanged": ["prepare"],
    }
    assert changed_experiments(["evaluate@dcgan28", "train@cgan", "sample@cgan", "sample@mlp_gan"]) == [
        "cgan",
        "mlp_gan",
    ]


def _open_store_and_log_a_run(root: str) -> str:
    from gan_pipeline import tracking
    from gan_pipeline.config import TrackingConfig

    cfg = TrackingConfig(experiment_name="gan-pipeline", retries=2, retry_backoff_s=1)
    with tracking.run(cfg, "mlp_gan", {"train.lr": 0.001}, {}, root=Path(root)) as run:
        run.log_metrics({"loss_d": 1.0}, step=1)
    return run.experiment_id


def test_parallel_first_use_of_a_new_store_creates_it_once(tmp_path, monkeypatch):
    """Queue workers that open a store nobody created yet (a fresh clone's first sweep) all succeed."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        experiment_ids = pool.map(_open_store_and_log_a_run, [str(tmp_path)] * 3)
    assert len(set(experiment_ids)) == 1
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_runs(experiment_ids[:1])) == 3


@pytest.fixture(scope="module")
def retrained(reproduced_project, tmp_path_factory) -> tuple[Path, str]:
    """A branch off the baseline that changes one param, after CI's retrain script ran on it."""
    repo = clone_reproduced(reproduced_project[0], tmp_path_factory.mktemp("retrain"))
    run(["git", "checkout", "-qb", "cgan-lr"], repo)
    set_params(repo, lambda p: p["experiments"]["cgan"]["train"].update(lr=0.0003))
    commit(repo, "cgan: lr 0.0003")
    output = run(["bash", "scripts/retrain_report.sh", "main", "reports/retrain"], repo).stdout
    ARTIFACTS.mkdir(exist_ok=True)  # what CI's job summary would show, kept for people to read
    (ARTIFACTS / "retrain_report.md").write_text(output)
    return repo, output


def test_retrain_script_reruns_only_the_changed_experiment(retrained):
    repo, _ = retrained
    assert ran_stages((repo / "reports/retrain/repro.log").read_text()) == experiment_stages("cgan") | {
        "report"
    }


def test_retrain_report_shows_the_param_and_metric_changes_and_the_grid(retrained):
    repo, output = retrained
    report = (repo / "reports/retrain/report.md").read_text()
    assert report.strip() in output
    lr_row = next(line for line in report.splitlines() if "experiments.cgan.train.lr" in line)
    assert "0.0002" in lr_row and "0.0003" in lr_row
    metric_rows = [line for line in report.splitlines() if line.startswith("| metrics/")]
    assert any(row.startswith("| metrics/cgan.json") and "fid_classifier" in row for row in metric_rows)
    assert not any(exp in row for row in metric_rows for exp in ("mlp_gan", "dcgan28"))
    assert "![cgan samples](cgan-grid.png)" in report
    assert sorted(p.name for p in (repo / "reports/retrain").glob("*.png")) == ["cgan-grid.png"]


def test_retrain_script_pushes_to_the_default_local_remote(retrained):
    repo, _ = retrained
    assert run(["dvc", "remote", "default"], repo).stdout.strip() == "local"
    assert json.loads(run(["dvc", "status", "--cloud", "--json"], repo).stdout) == {}
    storage = (repo / ".dvc" / "../../gan-pipeline-dvc-storage").resolve()
    assert len([p for p in storage.rglob("*") if p.is_file()]) > 10


def _exp_metrics(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's name -> its params and metrics files' data."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": {path: m["data"] for path, m in data["metrics"].items()},
                }
    return found


def test_queued_sweep_with_two_workers_lands_each_run_in_mlflow(reproduced_project, tmp_path):
    repo = clone_reproduced(reproduced_project[0], tmp_path / "sweep")
    values = ",".join(str(lr) for lr in SWEEP)
    run(["dvc", "exp", "run", "--queue", "-S", f"experiments.mlp_gan.train.lr={values}"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    try:
        deadline = time.monotonic() + 420
        while True:
            status = run(["dvc", "queue", "status"], repo).stdout
            if not any(word in status for word in ("Queued", "Running")) or time.monotonic() > deadline:
                break
            time.sleep(5)
    finally:
        run(["dvc", "queue", "stop", "--kill"], repo, check=False)
    assert status.count("Success") == len(SWEEP), status

    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    experiments = _exp_metrics(json.loads(shown))
    assert len(experiments) == len(SWEEP), shown[:2000]
    ARTIFACTS.mkdir(exist_ok=True)  # the sweep as `dvc exp show` lists it, a few columns
    lines = [
        "| experiment | lr | fid_classifier | fid_inception | coverage |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, e in sorted(experiments.items()):
        m = e["metrics"]["metrics/mlp_gan.json"]
        lr = e["params"]["experiments"]["mlp_gan"]["train"]["lr"]
        lines.append(
            f"| {name} | {lr} | {m['fid_classifier']:.2f} | {m['fid_inception']:.2f} | {m['coverage']} |"
        )
    (ARTIFACTS / "sweep_exp_show.md").write_text("\n".join(lines) + "\n")
    lrs = sorted(e["params"]["experiments"]["mlp_gan"]["train"]["lr"] for e in experiments.values())
    assert lrs == sorted(SWEEP)
    for e in experiments.values():
        assert e["metrics"]["metrics/mlp_gan.json"]["fid_classifier"] > 0

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("gan-pipeline").experiment_id
    runs = client.search_runs([experiment_id], "tags.dvc_exp_name != ''")
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == sorted(experiments)
    for r in runs:
        assert r.info.run_name == "mlp_gan" and r.info.status == "FINISHED"
        name = r.data.tags["dvc_exp_name"]
        assert (
            float(r.data.params["train.lr"])
            == experiments[name]["params"]["experiments"]["mlp_gan"]["train"]["lr"]
        )
        assert r.data.metrics["fid_classifier"] == pytest.approx(
            experiments[name]["metrics"]["metrics/mlp_gan.json"]["fid_classifier"]
        )
