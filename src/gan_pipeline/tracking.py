"""The one module that talks to MLflow.

The store is anchored at the DVC repository's root: `sqlite:///<root>/mlflow.db` with artifacts in
`<root>/mlartifacts`, unless MLFLOW_TRACKING_URI names another store (a team server). Stages find their
run through the `run_id` that the train stage writes into its outputs, never by re-execution, so DVC's
run-cache restores stay linked to the run that made the outputs.

The train stage opens its run with `with run(...) as r:`, which sets the run's final status; the stages
after it log into that run with `with attach(...) as r:`. Both hand out a `Run`, which logs through an
`MlflowClient` for the store's URI: MLflow's global tracking URI is set only around the fluent calls that
read it, and put back afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from torch import nn

from gan_pipeline.errors import PipelineError, first_line

if TYPE_CHECKING:
    from gan_pipeline.config import TrackingConfig

# mlflow.db and artifacts are git-ignored; the MLflow UI reads them from the repo root.
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
GENERATOR_ARTIFACT = "generator"


# --- where the store is ----------------------------------------------------------------------------------


def repo_root(start: str | Path | None = None) -> Path:
    """The repository that owns the MLflow store.

    `dvc exp run --queue/--temp` runs stages in a copy under `<repo>/.dvc/tmp/exps/...`; a store inside the
    copy would be thrown away with it, so the original repository's root is returned for such paths.
    """
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DB_NAME}"


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


@contextlib.contextmanager
def _first_use_lock(uri: str):
    """Hold an exclusive lock beside a local SQLite store (`<db>.lock`) while a process opens it.

    Parallel writers (`dvc queue start -j 2`) race on creating and migrating the schema and on creating the
    experiment, which MLflow does without a lock, so one of them fails; once both exist, SQLite's busy
    timeout (MLflow sets 20 s) serialises the writes.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str):
    """MLflow's global tracking URI set to `uri` for the block, for the fluent calls that read it.

    Setting it also sets MLFLOW_TRACKING_URI in os.environ (for subprocesses); both are put back, so that
    `tracking_uri` and later calls see what they saw before.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # also removes MLFLOW_TRACKING_URI
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


class _Store:
    """A connection to the tracking store and the project's MLflow experiment; PipelineError if the store
    does not answer now, before any training."""

    def __init__(self, cfg: TrackingConfig, root: Path | None):
        self.root = repo_root(root)
        self.uri = tracking_uri(self.root)
        # MLflow's HTTP client retries each request (7 times, up to minutes, by default); the params say how
        # often, unless the environment already does.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(cfg.retry_backoff_s))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            with _first_use_lock(self.uri):
                self.client = MlflowClient(self.uri)
                self.experiment_id = self._experiment(cfg.experiment_name)
        except (MlflowException, OSError) as exc:
            raise PipelineError(
                f"MLflow store {self.uri}: not reachable or not usable ({first_line(exc)})"
            ) from None

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.root / ARTIFACTS_DIR).as_uri() if _is_local_store(self.uri) else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def create_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """A new run with its params (flattened keys) and tags: its id."""
        created = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        self.client.log_batch(created.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return created.info.run_id

    def reopen(self, run_id: str, params: Mapping[str, Any]) -> tuple[int, dict[str, str]] | None:
        """Reopen an interrupted run of this experiment: (the last step it has metrics for, the params whose
        value changed), or None when the store does not have it."""
        try:
            found = self.client.get_run(run_id)
        except MlflowException:
            return None
        if found.info.experiment_id != self.experiment_id:
            return None
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        logged = found.data.params
        new = {k: str(v) for k, v in params.items() if k not in logged}
        changed = {k: str(v) for k, v in params.items() if k in logged and logged[k] != str(v)}
        if new:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
        history = self.client.get_metric_history(run_id, "loss_d")
        return max((m.step for m in history), default=0), changed


# --- the run handle --------------------------------------------------------------------------------------


class Terminated(SystemExit):
    """SIGTERM while a run is open: raised in the main thread so that the run is marked KILLED; uncaught,
    the process exits with 128 + SIGTERM, as a shell reports a process that SIGTERM ended."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class Run:
    """An MLflow run to log into: `id`, `uri` (the store's tracking URI), and for a run opened by `run`,
    `resumed` and `logged_until` (the last step that the interrupted run it reopened has metrics for).

    If the store fails after the run was opened, the handle goes offline: calls made through it are skipped
    and listed in `not_logged`, so that training goes on and the stage can say what the run lacks (the DVC
    outputs hold everything); `run` and `attach` print that as a warning when their block ends.
    """

    def __init__(self, store: _Store, run_id: str, resumed: bool = False, logged_until: int = 0):
        self._client = store.client
        self.id = run_id
        self.uri = store.uri
        # run.json's form of the URI: the repository's own store relative to its root, so that no machine
        # path lands in an output (load_generator resolves it against the repository again).
        self.recorded_uri = (
            f"sqlite:///{DB_NAME}" if store.uri == f"sqlite:///{store.root / DB_NAME}" else store.uri
        )
        self.experiment_id = store.experiment_id
        self.resumed = resumed
        self.logged_until = logged_until
        self.offline: str | None = None  # why the store stopped answering, once it has
        self.not_logged: list[str] = []

    def _guarded(self, what: str, call: Callable[[], Any]) -> Any:
        """Run one logging call; when the store fails, go offline, record `what`, and return None."""
        if self.offline is None:
            try:
                return call()
            except (MlflowException, OSError) as exc:
                self.offline = first_line(exc)
                print(
                    f"warning: MLflow store {self.uri} failed ({self.offline}); going on without it",
                    file=sys.stderr,
                )
        self.not_logged.append(what)
        return None

    def report(self) -> str | None:
        """A line saying what did not reach the store, or None when everything did."""
        if not self.not_logged:
            return None
        steps = [w for w in self.not_logged if w.startswith("metrics at step ")]
        others = [w for w in self.not_logged if not w.startswith("metrics at step ")]
        parts = []
        if steps:
            first, last = steps[0].rsplit(" ", 1)[1], steps[-1].rsplit(" ", 1)[1]
            parts.append(f"metrics at {len(steps)} steps ({first}..{last})")
        parts.extend(others)
        return f"MLflow store {self.uri} failed ({self.offline}): not logged: {'; '.join(parts)}"

    def _warn_if_not_logged(self) -> None:
        if report := self.report():
            print(f"warning: {report}", file=sys.stderr)

    def log_step(self, step: int, stats: Mapping[str, float]) -> None:
        """The training loop's `on_step(step, stats)`: log the stats (less `step`) at that step, skipping
        steps up to `logged_until`, which the interrupted run that this one resumes logged already."""
        if step > self.logged_until:
            self.log_metrics({k: v for k, v in stats.items() if k != "step"}, step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Log numbers (non-numeric values are skipped) at `step`."""
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]

        def log() -> None:
            for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
                self._client.log_batch(self.id, metrics=batch[start : start + 1000])

        self._guarded(f"metrics at step {step}", log)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guarded(
            f"artifact {Path(path).name}",
            lambda: self._client.log_artifact(self.id, str(path), artifact_path),
        )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._guarded(
                f"tag {key}", lambda key=key, value=value: self._client.set_tag(self.id, key, value)
            )

    def log_generator(self, generator: nn.Module, latent_dim: int, conditional: bool) -> str | None:
        """Log G as an MLflow model: its URI, or None when the store has failed (see _log_generator_model)."""
        return self._guarded(
            "the generator model",
            lambda: _log_generator_model(self.uri, self.id, generator, latent_dim, conditional),
        )

    def _end(self, status: int) -> None:
        name = RunStatus.to_string(status)
        self._guarded(f"run status {name}", lambda: self._client.set_terminated(self.id, name))


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """For the block, SIGTERM raises Terminated in the main thread instead of ending the process at once;
    the handler it replaces is put back afterwards, and already at the first SIGTERM, so that a second one
    acts as it did before. Python runs signal handlers in the main thread only, so other threads get none."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # installed from outside Python: the default action is all that can be restored
        previous = signal.SIG_DFL

    def raise_terminated(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, previous)
        raise Terminated

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def run(
    cfg: TrackingConfig,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    resume: str | None = None,
    root: Path | None = None,
) -> Iterator[Run]:
    """A run in the store of the repository at `root` (default: the working directory's), with its params
    (flattened keys) and tags: `resume`, the run id of an interrupted run, is reopened if the store still has
    it (a resumable param that grew, such as epochs, becomes a `resumed_with.<key>` tag, since MLflow params
    cannot change), else a new run is created.

    The run ends FINISHED when the block does, FAILED when it raises, KILLED on KeyboardInterrupt or
    SIGTERM (which raises Terminated for the block's duration); then what did not reach the store is
    printed as a warning. PipelineError, before the block, when the store does not answer.
    """
    with _sigterm_raises():
        store = _Store(cfg, root)
        reopened = store.reopen(resume, params) if resume is not None else None
        if reopened is None:
            handle = Run(store, store.create_run(name, params, tags))
        else:
            handle = Run(store, resume, resumed=True, logged_until=reopened[0])
            handle.set_tags({f"resumed_with.{k}": v for k, v in reopened[1].items()})
        try:
            yield handle
        except (KeyboardInterrupt, Terminated):
            handle._end(RunStatus.KILLED)
            raise
        except BaseException:
            handle._end(RunStatus.FAILED)
            raise
        else:
            handle._end(RunStatus.FINISHED)
        finally:
            handle._warn_if_not_logged()


@contextlib.contextmanager
def attach(cfg: TrackingConfig, run_id: str, root: Path | None = None) -> Iterator[Run]:
    """The run `run_id` (from the train stage's run.json) in the store of the repository at `root` (default:
    the working directory's), to log into without changing its status; at the end of the block, what did
    not reach the store is printed as a warning. PipelineError when the store does not answer.

    The store is found as the train stage finds it, not from run.json's `tracking_uri`: a copy of the
    project or a run-cache restore carries run.json from another checkout, whose store may be gone.
    """
    handle = Run(_Store(cfg, root), run_id)
    try:
        yield handle
    finally:
        handle._warn_if_not_logged()


def info_tags(info: Mapping[str, Any]) -> dict[str, str]:
    """An info file's content (what describes a stage's scores) as MLflow tags, which unlike params may
    change when a stage re-runs into the same run: nested keys joined by '.', values as text, and the
    `environment` entry under `env.` (env.torch, env.cpu_capability, env.threads, env.device)."""
    tags: dict[str, str] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                add(f"{key}.{k}", v)
        else:
            tags[key] = str(value)

    for key, value in info.items():
        add("env" if key == "environment" else key, value)
    return tags


# --- the generator as an MLflow model --------------------------------------------------------------------


def _log_generator_model(
    uri: str, run_id: str, generator: nn.Module, latent_dim: int, conditional: bool
) -> str:
    """Log G with a tensor signature in torch.export's pt2 format (no pickle); return its model URI."""
    generator = generator.cpu().eval()
    z = np.random.default_rng(0).standard_normal((2, latent_dim)).astype(np.float32)
    inputs = [TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z")]
    example: tuple[np.ndarray, ...] = (z,)
    if conditional:
        inputs.append(TensorSpec(np.dtype(np.int64), (-1,), "labels"))
        example = (z, np.arange(2, dtype=np.int64))
    with torch.no_grad():
        image_shape = tuple(generator(*(torch.from_numpy(x) for x in example)).shape[1:])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *image_shape), "images")])
    signature = ModelSignature(inputs=Schema(inputs), outputs=outputs)
    # log_model logs into the fluent API's active run, in the store of the global tracking URI.
    with _fluent_tracking_uri(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            generator,
            name=GENERATOR_ARTIFACT,
            signature=signature,
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    # Reopening the run with the fluent API leaves it FINISHED; `run` sets its final status when it ends.
    return info.model_uri


def load_generator(model_uri: str, tracking_uri: str, root: str | Path | None = None) -> Any:
    """The generator logged as `model_uri` in the store at `tracking_uri` (both in run.json), back from
    MLflow: a callable torch module taking z[, labels]. A relative SQLite path (run.json's form of the
    repository's own store) is found in the repository at or above `root` (default: the working directory)."""
    path = tracking_uri.removeprefix("sqlite:///")
    if tracking_uri.startswith("sqlite:///") and not Path(path).is_absolute():
        tracking_uri = f"sqlite:///{repo_root(root) / path}"
    with _fluent_tracking_uri(tracking_uri):
        return mlflow.pytorch.load_model(model_uri)
