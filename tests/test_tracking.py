"""The MLflow adapter: the store is anchored at the repo root, runs carry params, metrics, tags, the
generator, and a tracking server given by MLFLOW_TRACKING_URI is used instead of the local store."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from mlflow.tracking import MlflowClient

from gan_pipeline import tracking
from gan_pipeline.models import build_gan


def test_repo_root_of_a_queued_experiment_copy_is_the_original_repo(tmp_path):
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12" / "stages"
    copy.mkdir(parents=True)
    assert tracking.repo_root(copy) == tmp_path / "repo"


def test_repo_root_walks_up_to_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert tracking.repo_root(tmp_path / "a" / "b") == tmp_path


def test_tracking_uri_is_absolute_sqlite_unless_the_environment_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_dvc_lock_hashes_reads_stage_outputs(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: x\n    outs:\n"
        "    - path: data/prepared/mnist.h5\n      md5: abc123\n      size: 10\n"
    )
    assert tracking.dvc_lock_hashes(tmp_path, ["data/prepared/mnist.h5", "other"]) == {
        "data/prepared/mnist.h5": "abc123"
    }


def test_run_with_params_metrics_and_a_reloadable_conditional_generator(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    tracker = tracking.Tracker("unit", root=tmp_path)
    run_id = tracker.start_run(
        "cgan", {"train.lr": 0.0002, "train.betas": [0.5, 0.999]}, {"data_content_hash": "h"}
    )
    tracker.step_logger(run_id)(10, {"step": 10, "loss_d": 0.5, "loss_g": 1.5})
    tracker.log_metrics(run_id, {"coverage": 10, "class_histogram": {"0": 1}}, step=10)
    torch.manual_seed(0)
    generator, _ = build_gan("cgan", 16)
    model_uri = tracker.log_generator(run_id, generator, 16, conditional=True)
    tracker.finish(run_id)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(run_id)
    assert run.data.params == {"train.lr": "0.0002", "train.betas": "[0.5, 0.999]"}
    assert run.data.metrics == {"loss_d": 0.5, "loss_g": 1.5, "coverage": 10.0}
    assert run.data.tags["data_content_hash"] == "h"
    assert run.info.status == "FINISHED"
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts anchored at the root, not the cwd

    reloaded = tracking.load_generator(model_uri)
    z, labels = torch.randn(3, 16), torch.tensor([0, 5, 9])
    assert torch.allclose(reloaded(z, labels), generator.eval()(z, labels), atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server_process(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 (its URL and process), stopped after the test."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(mlflow_server_process):
    """The URL of a real MLflow tracking server on 127.0.0.1, stopped after the test."""
    return mlflow_server_process[0]


def test_a_tracking_server_from_the_environment_receives_the_run(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracker = tracking.Tracker("team", root=tmp_path)
    run_id = tracker.start_run("mlp_gan", {"train.lr": 0.001}, {})
    tracker.log_metrics(run_id, {"fid_classifier": 12.5})
    tracker.finish(run_id)
    assert not (tmp_path / "mlflow.db").exists()
    run = MlflowClient(mlflow_server).get_run(run_id)
    assert run.data.metrics["fid_classifier"] == 12.5
    assert run.data.params["train.lr"] == "0.001"


@pytest.fixture
def fast_failing_http(monkeypatch):
    """No MLflow HTTP retries, so that a dead server fails at once (restored after the test)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_an_unreachable_server_at_start_is_one_clear_error(tmp_path, monkeypatch, fast_failing_http):
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    start = time.monotonic()
    with pytest.raises(tracking.PipelineError) as err:
        tracking.Tracker("team", root=tmp_path)
    assert str(err.value).startswith(f"MLflow store {url}: not reachable or not usable (")
    assert "\n" not in str(err.value)
    assert time.monotonic() - start < 30


def test_a_server_that_goes_away_during_training_is_reported_not_fatal(
    mlflow_server_process, tmp_path, monkeypatch, fast_failing_http
):
    mlflow_server, server = mlflow_server_process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracker = tracking.Tracker("team", root=tmp_path)
    run_id = tracker.start_run("mlp_gan", {"train.lr": 0.001}, {})
    on_step = tracker.step_logger(run_id)
    on_step(10, {"step": 10, "loss_d": 1.0})
    server.terminate()  # the server goes away mid-run
    server.wait(timeout=30)
    for step in (20, 30, 40):
        on_step(step, {"step": step, "loss_d": 1.0})
    plot = tmp_path / "training.png"
    plot.write_bytes(b"png")
    tracker.log_artifact(run_id, plot)
    tracker.finish(run_id)
    assert tracker.offline is not None
    report = tracker.report()
    assert report.startswith(f"MLflow store {mlflow_server} failed (")
    assert report.endswith(
        "not logged: metrics at 3 steps (20..40); artifact training.png; run status FINISHED"
    )


def test_an_interrupted_run_is_resumed_not_duplicated(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    tracker = tracking.Tracker("unit", root=tmp_path)
    run_id = tracker.start_run("cgan", {"train.epochs": 2, "train.lr": 0.0002}, {})
    for step in (10, 20):
        tracker.step_logger(run_id)(step, {"step": step, "loss_d": 0.5})
    # killed here; a new process resumes the run from its checkpoint (which was at step 15)
    again = tracking.Tracker("unit", root=tmp_path)
    assert again.resume_run(run_id, {"train.epochs": 3, "train.lr": 0.0002}) == 20
    on_step = again.step_logger(run_id, after_step=20)
    for step in (20, 30):
        on_step(step, {"step": step, "loss_d": 0.25})
    again.finish(run_id)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(client.search_runs([again.experiment_id])) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss_d")] == [
        (10, 0.5),
        (20, 0.5),
        (30, 0.25),
    ]
    assert run.data.params["train.epochs"] == "2" and run.data.tags["resumed_with.train.epochs"] == "3"
    assert again.resume_run("0" * 32, {}) is None  # a run the store does not have: start a new one
    new_id, logged_until = again.start_or_resume("0" * 32, "cgan", {"train.lr": 0.0002}, {})
    assert new_id != run_id and logged_until == 0
    assert again.start_or_resume(run_id, "cgan", {}, {}) == (run_id, 30)
