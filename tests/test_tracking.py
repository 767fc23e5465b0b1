"""The MLflow adapter: the store is anchored at the repo root, runs carry params, metrics, tags, the
generator, end FINISHED, FAILED or KILLED with their block, and a tracking server given by MLFLOW_TRACKING_URI
is used instead of the local store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from gan_pipeline import tracking
from gan_pipeline.config import TrackingConfig
from gan_pipeline.errors import first_line
from gan_pipeline.models import build_gan

UNIT = TrackingConfig(experiment_name="unit", retries=2, retry_backoff_s=1)
TEAM = TrackingConfig(experiment_name="team", retries=2, retry_backoff_s=1)


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


def test_first_line_of_an_exception_or_its_type_when_it_says_nothing():
    assert first_line(ValueError("\n  no such table: experiments\n(Background on this error ...)")) == (
        "no such table: experiments"
    )
    assert first_line(ConnectionError()) == "ConnectionError"


def test_info_tags_flatten_an_info_file_with_the_environment_under_env():
    info = {
        "sample_sizes": {"fid_classifier_n_fake": 200, "fid_classifier_n_real": 1000},
        "feature_backend": {"classifier": "DigitClassifier penultimate layer"},
        "inception_bf16": False,
        "environment": {"torch": "2.5.1+cpu", "cpu_capability": "AVX2", "threads": 1, "device": "cpu"},
    }
    assert tracking.info_tags(info) == {
        "sample_sizes.fid_classifier_n_fake": "200",
        "sample_sizes.fid_classifier_n_real": "1000",
        "feature_backend.classifier": "DigitClassifier penultimate layer",
        "inception_bf16": "False",
        "env.torch": "2.5.1+cpu",
        "env.cpu_capability": "AVX2",
        "env.threads": "1",
        "env.device": "cpu",
    }


def _local_store(tmp_path: Path, monkeypatch) -> MlflowClient:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def test_run_with_params_metrics_and_a_reloadable_conditional_generator(tmp_path, monkeypatch):
    client = _local_store(tmp_path, monkeypatch)
    params = {"train.lr": 0.0002, "train.betas": [0.5, 0.999]}
    with tracking.run(UNIT, "cgan", params, {"data_content_hash": "h"}, root=tmp_path) as run:
        run.log_step(10, {"step": 10, "loss_d": 0.5, "loss_g": 1.5})
        run.log_metrics({"coverage": 10, "class_histogram": {"0": 1}}, step=10)
        torch.manual_seed(0)
        generator, _ = build_gan("cgan", 16)
        model_uri = run.log_generator(generator, 16, conditional=True)

    assert run.uri == f"sqlite:///{tmp_path}/mlflow.db" and not run.resumed
    logged = client.get_run(run.id)
    assert logged.data.params == {"train.lr": "0.0002", "train.betas": "[0.5, 0.999]"}
    assert logged.data.metrics == {"loss_d": 0.5, "loss_g": 1.5, "coverage": 10.0}
    assert logged.data.tags["data_content_hash"] == "h"
    assert logged.info.status == "FINISHED"
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts anchored at the root, not the cwd
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow's global URI was set only around log_model

    reloaded = tracking.load_generator(model_uri, run.uri)
    z, labels = torch.randn(3, 16), torch.tensor([0, 5, 9])
    assert torch.allclose(reloaded(z, labels), generator.eval()(z, labels), atol=1e-6)


def test_load_generator_from_another_directory_without_a_global_tracking_uri(tmp_path, monkeypatch):
    import mlflow

    repo = tmp_path / "repo"
    repo.mkdir()
    _local_store(repo, monkeypatch)
    with tracking.run(UNIT, "mlp_gan", {}, {}, root=repo) as run:
        torch.manual_seed(0)
        generator, _ = build_gan("mlp_gan", 8)
        model_uri = run.log_generator(generator, 8, conditional=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mlflow.set_tracking_uri(None)  # as in a fresh process
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert run.recorded_uri == "sqlite:///mlflow.db"  # run.json's form: relative to the repository
    reloaded = tracking.load_generator(model_uri, run.recorded_uri, root=repo)
    z = torch.randn(3, 8)
    assert torch.allclose(reloaded(z), generator.eval()(z), atol=1e-6)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert list(elsewhere.iterdir()) == []  # no store made in the working directory


def test_a_run_whose_block_raises_ends_failed_and_the_error_goes_on(tmp_path, monkeypatch):
    client = _local_store(tmp_path, monkeypatch)
    with (
        pytest.raises(ValueError, match="diverged"),
        tracking.run(UNIT, "cgan", {}, {}, root=tmp_path) as run,
    ):
        raise ValueError("diverged")
    assert client.get_run(run.id).info.status == "FAILED"


def test_a_run_interrupted_from_the_keyboard_ends_killed(tmp_path, monkeypatch):
    client = _local_store(tmp_path, monkeypatch)
    with pytest.raises(KeyboardInterrupt), tracking.run(UNIT, "cgan", {}, {}, root=tmp_path) as run:
        raise KeyboardInterrupt
    assert client.get_run(run.id).info.status == "KILLED"


def test_the_sigterm_handler_is_there_for_the_block_only(tmp_path, monkeypatch):
    _local_store(tmp_path, monkeypatch)
    before = signal.getsignal(signal.SIGTERM)
    with tracking.run(UNIT, "cgan", {}, {}, root=tmp_path):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


SIGTERMED_RUN = """
import sys, time
from pathlib import Path
from gan_pipeline import tracking
from gan_pipeline.config import TrackingConfig

cfg = TrackingConfig(experiment_name="unit", retries=2, retry_backoff_s=1)
with tracking.run(cfg, "cgan", {}, {}, root=Path(sys.argv[1])) as run:
    print(run.id, flush=True)
    time.sleep(120)
"""


def test_a_run_whose_process_gets_sigterm_ends_killed(tmp_path, monkeypatch):
    client = _local_store(tmp_path, monkeypatch)
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERMED_RUN, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    try:
        run_id = proc.stdout.readline().strip()  # the run is open
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert run_id, stderr
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert client.get_run(run_id).info.status == "KILLED"


def test_attach_logs_into_an_existing_run_without_changing_its_status(tmp_path, monkeypatch, capsys):
    client = _local_store(tmp_path, monkeypatch)
    with tracking.run(UNIT, "cgan", {}, {}, root=tmp_path) as run:
        pass
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"png")
    with tracking.attach(UNIT, run.id, root=tmp_path) as attached:
        attached.log_metrics({"fid_classifier": 3.5}, step=16)
        attached.log_artifact(grid)
    assert attached.uri == run.uri and attached.id == run.id
    logged = client.get_run(run.id)
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics == {"fid_classifier": 3.5}
    assert [a.path for a in client.list_artifacts(run.id)] == ["grid.png"]
    assert "warning" not in capsys.readouterr().err  # everything reached the store


def test_attach_to_a_run_the_store_lacks_warns_at_the_end(tmp_path, monkeypatch, capsys):
    _local_store(tmp_path, monkeypatch)
    with tracking.attach(UNIT, "0" * 32, root=tmp_path) as attached:
        attached.log_metrics({"fid_classifier": 3.5}, step=16)
        assert attached.not_logged == ["metrics at step 16"]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"warning: MLflow store {attached.uri} failed (")
    assert last.endswith("not logged: metrics at 1 steps (16..16)")


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
        deadline = time.monotonic() + 120  # starting and stopping take over a minute on a busy CPU
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
        proc.wait(timeout=120)


@pytest.fixture
def mlflow_server(mlflow_server_process):
    """The URL of a real MLflow tracking server on 127.0.0.1, stopped after the test."""
    return mlflow_server_process[0]


def test_a_tracking_server_from_the_environment_receives_the_run(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with tracking.run(TEAM, "mlp_gan", {"train.lr": 0.001}, {}, root=tmp_path) as handle:
        handle.log_metrics({"fid_classifier": 12.5})
    assert handle.uri == mlflow_server
    assert not (tmp_path / "mlflow.db").exists()
    run = MlflowClient(mlflow_server).get_run(handle.id)
    assert run.info.status == "FINISHED"
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
    with pytest.raises(tracking.PipelineError) as err, tracking.run(TEAM, "mlp_gan", {}, {}, root=tmp_path):
        pytest.fail("the block ran")
    assert str(err.value).startswith(f"MLflow store {url}: not reachable or not usable (")
    assert "\n" not in str(err.value)
    assert time.monotonic() - start < 30


def test_a_server_that_goes_away_during_training_is_reported_not_fatal(
    mlflow_server_process, tmp_path, monkeypatch, fast_failing_http, capsys
):
    mlflow_server, server = mlflow_server_process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with tracking.run(TEAM, "mlp_gan", {"train.lr": 0.001}, {}, root=tmp_path) as run:
        run.log_step(10, {"step": 10, "loss_d": 1.0})
        server.terminate()  # the server goes away mid-run
        server.wait(timeout=120)
        for step in (20, 30, 40):
            run.log_step(step, {"step": step, "loss_d": 1.0})
        plot = tmp_path / "training.png"
        plot.write_bytes(b"png")
        run.log_artifact(plot)
    assert run.offline is not None
    report = run.report()
    assert report.startswith(f"MLflow store {mlflow_server} failed (")
    assert report.endswith(
        "not logged: metrics at 3 steps (20..40); artifact training.png; run status FINISHED"
    )
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"warning: {report}"  # said when it ended


def test_an_interrupted_run_is_resumed_not_duplicated(tmp_path, monkeypatch):
    client = _local_store(tmp_path, monkeypatch)
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.run(UNIT, "cgan", {"train.epochs": 2, "train.lr": 0.0002}, {}, root=tmp_path) as first,
    ):
        for step in (10, 20):
            first.log_step(step, {"step": step, "loss_d": 0.5})
        raise KeyboardInterrupt  # killed here; a new process resumes the run from its checkpoint (at step 15)
    grown = {"train.epochs": 3, "train.lr": 0.0002}
    with tracking.run(UNIT, "cgan", grown, {}, resume=first.id, root=tmp_path) as again:
        assert client.get_run(first.id).info.status == "RUNNING"
        for step in (20, 30):
            again.log_step(step, {"step": step, "loss_d": 0.25})
    assert (again.id, again.resumed, again.logged_until) == (first.id, True, 20)
    assert len(client.search_runs([again.experiment_id])) == 1
    run = client.get_run(first.id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(first.id, "loss_d")] == [
        (10, 0.5),
        (20, 0.5),
        (30, 0.25),
    ]
    assert run.data.params["train.epochs"] == "2" and run.data.tags["resumed_with.train.epochs"] == "3"
    # a run the store does not have: start a new one
    with tracking.run(UNIT, "cgan", {"train.lr": 0.0002}, {}, resume="0" * 32, root=tmp_path) as new:
        pass
    assert new.id != first.id and (new.resumed, new.logged_until) == (False, 0)
    with tracking.run(UNIT, "cgan", {}, {}, resume=first.id, root=tmp_path) as once_more:
        pass
    assert (once_more.id, once_more.resumed, once_more.logged_until) == (first.id, True, 30)
