"""The users' retrain loop, run for real in a copy of the reproduced project: CI's script
(scripts/retrain_report.sh) after a one-param change, and a queued sweep with two workers; and its gate,
on metrics files of a ruined model and of another seed, also through the real report in a git + DVC repo."""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from pipeline_helpers import (
    EXPERIMENTS,
    REPO,
    clone_reproduced,
    commit,
    experiment_stages,
    ran_stages,
    run,
    set_params,
)

from gan_pipeline.reports.gate import (
    Check,
    GateResult,
    compare,
    load_tolerances,
    scalar_metrics,
    tolerance_from_spread,
    worse_when,
)
from gan_pipeline.reports.retrain import METRIC_KINDS, changed_experiments, stages_by_outcome

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
    stages = ["evaluate@dcgan28", "train@cgan", "sample@cgan", "sample@mlp_gan", "report"]
    assert changed_experiments(stages) == ["cgan", "mlp_gan"]
    assert changed_experiments(stages, METRIC_KINDS) == ["dcgan28", "cgan", "mlp_gan"]


# cgan's gated metrics over three training seeds, and as a cgan that one epoch trained scores them (a ruined
# model: no digit covered, label accuracy at chance).
CGAN_SEEDS = {
    "fid_classifier": [26.64, 24.1, 29.3],
    "fid_inception": [76.99, 74.2, 80.5],
    "kid_classifier": [7.95, 6.8, 9.1],
    "kid_classifier_std": [3.07, 2.9, 3.3],
    "coverage": [10, 10, 10],
    "label_accuracy": [0.9748, 0.968, 0.9791],
    "fid_classifier_n_fake": [10000, 10000, 10000],
}
RUINED = {
    "fid_classifier": 701.4,
    "fid_inception": 427.0,
    "kid_classifier": 177.5,
    "kid_classifier_std": 7.42,
    "coverage": 0,
    "label_accuracy": 0.1029,
    "fid_classifier_n_fake": 10000,
}
CGAN_TOLERANCES = {m: tolerance_from_spread(m, v) for m, v in CGAN_SEEDS.items()}


def _seed(i: int) -> dict[str, float]:
    return {metric: values[i] for metric, values in CGAN_SEEDS.items()}


def test_tolerance_is_three_stds_of_a_difference_or_the_range_and_whole_digits_for_coverage():
    assert tolerance_from_spread("fid_classifier", [1.0, 2.0, 3.0]) == pytest.approx(3 * math.sqrt(2))
    assert tolerance_from_spread("fid_inception", [100.0, 100.1, 100.2]) == pytest.approx(5.005)  # 5% of mean
    assert tolerance_from_spread("fid_classifier", [0.0, 0.0, 0.0, 10.0]) == pytest.approx(
        3 * math.sqrt(2) * 5.0
    )  # std of (0, 0, 0, 10) with N - 1: 5
    assert tolerance_from_spread("coverage", [10, 9, 10]) == 3.0  # 3 * sqrt(2) * 0.577 = 2.45, rounded up
    assert tolerance_from_spread("coverage", [10, 10, 10]) == 1.0
    with pytest.raises(ValueError, match="at least two seeds"):
        tolerance_from_spread("fid_classifier", [1.0])


def test_gate_checks_scores_and_digit_metrics_not_settings():
    gated = {
        m: worse_when(m) for m in (*CGAN_SEEDS, "kid_inception_subset_size", "fid_classifier_real_floor")
    }
    assert gated == {
        "fid_classifier": 1,
        "fid_inception": 1,
        "kid_classifier": 1,
        "kid_classifier_std": None,
        "coverage": -1,
        "label_accuracy": -1,
        "fid_classifier_n_fake": None,
        "kid_inception_subset_size": None,
        "fid_classifier_real_floor": None,
    }
    assert worse_when("fid_classifier_intra_class") == 1
    assert worse_when("prdc_classifier_coverage") is None and worse_when("kl_from_uniform") is None
    metrics = {"coverage": 10, "fid_classifier": 26.6, "fid_classifier_n_real": 1000, "prdc_nearest_k": 5,
               "class_histogram": {"0": 3}, "feature_backend": {}, "flag": True}  # fmt: skip
    assert scalar_metrics(metrics) == {"coverage": 10, "fid_classifier": 26.6}


def test_a_ruined_model_fails_the_gate_naming_the_experiment_and_the_metric():
    result = GateResult()
    compare("cgan", _seed(0), RUINED, CGAN_TOLERANCES, result)
    assert result.failed
    assert {c.metric for c in result.failures} == {
        "fid_classifier",
        "fid_inception",
        "kid_classifier",
        "coverage",
        "label_accuracy",
    }
    verdict = result.verdict()
    tolerance = CGAN_TOLERANCES["fid_classifier"]
    assert verdict.startswith(
        f"FAIL: cgan fid_classifier 26.64 -> 701.4 (+674.8 > tolerance {tolerance:.4g}); "
    )
    assert verdict.endswith("; and 2 more (see Gate)")
    assert "cgan coverage 10 -> 0 (-10, a drop > tolerance 1)" in [c.describe() for c in result.failures]


@pytest.mark.parametrize("seed", [1, 2])
def test_another_seed_passes_the_gate(seed):
    result = GateResult()
    compare("cgan", _seed(0), _seed(seed), CGAN_TOLERANCES, result)
    assert not result.failed and len(result.checks) == 5
    assert result.verdict() == "PASS: cgan within tolerance (5 metrics)"


def test_a_metric_without_a_measured_tolerance_gets_the_default_and_is_named():
    result = GateResult()
    tolerances = {m: t for m, t in CGAN_TOLERANCES.items() if m != "fid_inception"}
    compare("cgan", _seed(0), {**_seed(0), "fid_inception": 76.99 * 1.4}, tolerances, result)
    assert result.defaulted == ["cgan fid_inception"] and not result.failed  # default: half the base value
    compare("cgan", _seed(0), {**_seed(0), "fid_inception": 76.99 * 1.6}, tolerances, result)
    assert [c.describe() for c in result.failures] == [
        "cgan fid_inception 76.99 -> 123.2 (+46.19 > tolerance 38.49)"
    ]
    assert any("No measured tolerance" in line and "cgan fid_inception" in line
               for line in result.section("main", Path("t")))  # fmt: skip


def test_a_score_that_is_not_a_number_fails_and_a_dropped_metric_is_named():
    result = GateResult()
    now = {**_seed(0), "fid_classifier": float("nan")}
    del now["fid_inception"]
    compare("cgan", _seed(0), now, CGAN_TOLERANCES, result)
    assert [c.describe() for c in result.failures] == ["cgan fid_classifier 26.64 -> nan (not a number)"]
    assert result.dropped == ["cgan fid_inception"]


def test_check_describes_a_rise_as_the_report_shows_it():
    check = Check("cgan", "fid_classifier", 76.9, 412.3, 6.1, direction=1)
    assert check.failed and check.describe() == "cgan fid_classifier 76.9 -> 412.3 (+335.4 > tolerance 6.1)"
    assert not Check("cgan", "coverage", 10, 9, 1.0, direction=-1).failed


def test_committed_tolerances_cover_every_gated_metric_and_pass_another_seed():
    """benchmarks/tolerances.json (from benchmarks/seed_spread.py) has a measured tolerance for every gated
    metric of every default experiment, and the gate passes seed 1's metrics against seed 0's."""
    path = REPO / "benchmarks" / "tolerances.json"
    tolerances = load_tolerances(path)
    spread = json.loads(path.read_text())["experiments"]
    for exp in EXPERIMENTS:
        committed = REPO / "metrics" / f"{exp}.json"
        gated = {m for m in scalar_metrics(json.loads(committed.read_text())) if worse_when(m)}
        assert gated <= set(tolerances[exp]), f"{exp}: no tolerance for {gated - set(tolerances[exp])}"
        seeds = [{m: s["values"][i] for m, s in spread[exp]["metrics"].items()} for i in (0, 1)]
        result = GateResult()
        compare(exp, seeds[0], seeds[1], tolerances[exp], result)
        assert not result.failed and not result.defaulted, result.verdict()


def _gate_repo(root: Path, base_metrics: dict[str, dict], environment: dict) -> Path:
    """A git + DVC repo whose commit on main has an evaluate stage per experiment with its metrics file,
    its environment record (metrics/info/<exp>.json) and the tolerances of cgan."""
    root.mkdir()
    run(["git", "init", "-q", "-b", "main"], root)
    run(["dvc", "init", "-q"], root)
    stage = {
        "foreach": list(base_metrics) + ["dcgan28"],
        "do": {
            "cmd": "true",
            "params": ["experiments.${item}"],
            "metrics": [{"metrics/${item}.json": {"cache": False}}],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": stage}}))
    params = {"experiments": {exp: {"lr": 0.0002} for exp in [*base_metrics, "dcgan28"]}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for exp, metrics in base_metrics.items():
        (root / "metrics" / "info").mkdir(parents=True, exist_ok=True)
        (root / "metrics" / f"{exp}.json").write_text(json.dumps(metrics))
        (root / "metrics" / "info" / f"{exp}.json").write_text(json.dumps({"environment": environment}))
    tolerances = {
        "experiments": {"cgan": {"metrics": {m: {"tolerance": t} for m, t in CGAN_TOLERANCES.items()}}}
    }
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "tolerances.json").write_text(json.dumps(tolerances))
    commit(root, "base")
    return root


ENVIRONMENT = {"torch": "2.15.0", "cpu_capability": "AVX512", "threads": 1, "device": "cpu"}
NEW_EXPERIMENT_NOTE = "Note: environment of the base unknown (dcgan28)"


@pytest.mark.parametrize(
    ("cgan_now", "threads", "status", "first_line", "notes"),
    [
        (RUINED, 1, 1, "FAIL: cgan fid_classifier 26.64 -> 701.4 (+674.8 > tolerance", [NEW_EXPERIMENT_NOTE]),
        (
            _seed(2),
            2,
            0,
            "PASS: cgan within tolerance (5 metrics); dcgan28 new since the base",
            ["Note: environment differs from the base: threads 1 -> 2 (cgan)", NEW_EXPERIMENT_NOTE],
        ),
    ],
    ids=["ruined", "another_seed"],
)
def test_retrain_report_gate_fails_a_ruined_model_and_passes_another_seed(
    tmp_path, cgan_now, threads, status, first_line, notes
):
    """The real report (python -m gan_pipeline.reports.retrain) in a real git + DVC repo: cgan's metrics
    after `lr: 0.5` (ruined) or as another seed gives them, dcgan28 new since the base, mlp_gan's metrics
    worse but not retrained (not gated)."""
    repo = _gate_repo(tmp_path / "repo", {"cgan": _seed(0), "mlp_gan": _seed(0)}, ENVIRONMENT)
    set_params(repo, lambda p: p["experiments"]["cgan"].update(lr=0.5))
    metrics = repo / "metrics"
    (metrics / "cgan.json").write_text(json.dumps(cgan_now))
    (metrics / "info" / "cgan.json").write_text(
        json.dumps({"environment": {**ENVIRONMENT, "threads": threads}})
    )
    (metrics / "dcgan28.json").write_text(json.dumps(_seed(1)))
    (metrics / "info" / "dcgan28.json").write_text(json.dumps({"environment": ENVIRONMENT}))
    (metrics / "mlp_gan.json").write_text(json.dumps(RUINED))
    log = tmp_path / "repro.log"
    log.write_text("Running stage 'evaluate@cgan':\nRunning stage 'evaluate@dcgan28':\n"
                   "Stage 'evaluate@mlp_gan' didn't change, skipping\n")  # fmt: skip
    cmd = [sys.executable, "-m", "gan_pipeline.reports.retrain", "--base", "main", "--repro-log", str(log)]
    proc = run([*cmd, "--out", str(tmp_path / "out")], repo, check=False)
    assert proc.returncode == status, proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.strip() == proc.stdout.strip()
    lines = report.splitlines()
    assert lines[0].startswith(first_line)
    assert lines[1 : lines.index("")] == notes
    assert any(line.startswith("| metrics/cgan.json") and "fid_classifier" in line for line in lines)
    assert "| cgan | fid_classifier | 26.64 |" in report and "| mlp_gan |" not in report


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
    proc = run(["bash", "scripts/retrain_report.sh", "main", "reports/retrain"], repo, check=False)
    output = proc.stdout
    ARTIFACTS.mkdir(exist_ok=True)  # what CI's job summary would show, kept for people to read
    (ARTIFACTS / "retrain_report.md").write_text(output)
    # The tiny params' models are noise, which the full-size tolerances may call a regression either way:
    # the script's status must follow the report's first line.
    verdict = (repo / "reports/retrain/report.md").read_text().splitlines()[0]
    assert verdict.startswith(("PASS: cgan", "FAIL: cgan")), verdict
    assert proc.returncode == (1 if verdict.startswith("FAIL") else 0), proc.stderr
    return repo, output


def test_retrain_script_reruns_only_the_changed_experiment(retrained):
    repo, _ = retrained
    assert ran_stages((repo / "reports/retrain/repro.log").read_text()) == experiment_stages("cgan") | {
        "check",
        "report",
    }


def test_retrain_report_shows_the_param_and_metric_changes_and_the_grid(retrained):
    repo, output = retrained
    report = (repo / "reports/retrain/report.md").read_text()
    assert report.strip() in output
    lr_row = next(line for line in report.splitlines() if "experiments.cgan.train.lr" in line)
    base_lr = yaml.safe_load((REPO / "params.yaml").read_text())["experiments"]["cgan"]["train"]["lr"]
    assert str(base_lr) in lr_row and "0.0003" in lr_row
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
        name = r.data.tags["dvc_exp_name"]
        assert r.info.run_name == f"mlp_gan-{name}" and r.info.status == "FINISHED"
        assert (
            float(r.data.params["train.lr"])
            == experiments[name]["params"]["experiments"]["mlp_gan"]["train"]["lr"]
        )
        assert r.data.metrics["fid_classifier"] == pytest.approx(
            experiments[name]["metrics"]["metrics/mlp_gan.json"]["fid_classifier"]
        )
