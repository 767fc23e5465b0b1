"""The one module that talks to MLflow.

The store is anchored at the DVC repository's root: `sqlite:///<root>/mlflow.db` with artifacts in
`<root>/mlartifacts`, unless MLFLOW_TRACKING_URI names another store (a team server). Stages find their
run through the `run_id` that the train stage writes into its outputs, never by re-execution, so DVC's
run-cache restores stay linked to the run that made the outputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from torch import nn

from gan_pipeline.errors import PipelineError

# mlflow.db and artifacts are git-ignored; the MLflow UI reads them from the repo root.
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
GENERATOR_ARTIFACT = "generator"


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
    experiment (PITFALLS 2); once both exist, SQLite's busy timeout (MLflow sets 20 s) serialises the writes.
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


class Tracker:
    """A connection to the tracking store and the project's MLflow experiment.

    The store must answer when the tracker starts (else PipelineError, before any training). If it fails
    later, the tracker goes offline: calls made through it are skipped and listed in `not_logged`, so that
    training goes on and the stage can say what the run lacks (the DVC outputs hold everything).
    """

    def __init__(
        self, experiment_name: str, root: Path | None = None, retries: int = 2, retry_backoff_s: int = 1
    ):
        self.root = repo_root(root)
        self.uri = tracking_uri(self.root)
        # MLflow's HTTP client retries each request (7 times, up to minutes, by default); the params say how
        # often, unless the environment already does.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(retry_backoff_s))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        mlflow.set_tracking_uri(self.uri)
        self.offline: str | None = None  # why the store stopped answering, once it has
        self.not_logged: list[str] = []
        try:
            with _first_use_lock(self.uri):
                self.client = MlflowClient(self.uri)
                self.experiment_id = self._experiment(experiment_name)
        except (MlflowException, OSError) as exc:
            raise PipelineError(
                f"MLflow store {self.uri}: not reachable or not usable ({_first_line(exc)})"
            ) from None

    def _guarded(self, what: str, call: Callable[[], Any]) -> Any:
        """Run one logging call; when the store fails, go offline, record `what`, and return None."""
        if self.offline is None:
            try:
                return call()
            except (MlflowException, OSError) as exc:
                self.offline = _first_line(exc)
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

    def warn_if_not_logged(self) -> None:
        """Print report() to stderr as a warning when something did not reach the store."""
        if self.report():
            print(f"warning: {self.report()}", file=sys.stderr)

    def start_or_resume(
        self, run_id: str | None, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> tuple[str, int]:
        """(run id, last step already logged): `run_id` reopened if the store still has it, else a new run."""
        logged_until = self.resume_run(run_id, params) if run_id is not None else None
        if run_id is None or logged_until is None:
            return self.start_run(run_name, params, tags), 0
        return run_id, logged_until

    def resume_run(self, run_id: str, params: Mapping[str, Any]) -> int | None:
        """Reopen an interrupted run; return the last step it has metrics for, or None if it is gone."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.experiment_id != self.experiment_id:
            return None
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        new = {k: str(v) for k, v in params.items() if k not in run.data.params}
        changed = {
            k: str(v) for k, v in params.items() if k in run.data.params and run.data.params[k] != str(v)
        }
        if new:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
        # MLflow params cannot change; a resumable param (epochs) that grew is recorded as a tag.
        self.set_tags(run_id, {f"resumed_with.{k}": v for k, v in changed.items()})
        history = self.client.get_metric_history(run_id, "loss_d")
        return max((m.step for m in history), default=0)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.root / ARTIFACTS_DIR).as_uri() if _is_local_store(self.uri) else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Create a run with its params (flattened keys) and tags; return its id."""
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log numbers (non-numeric values are skipped) at `step`."""
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]

        def log() -> None:
            for start in range(0, len(batch), 1000):
                self.client.log_batch(run_id, metrics=batch[start : start + 1000])

        self._guarded(f"metrics at step {step}", log)

    def step_logger(self, run_id: str, after_step: int = 0):
        """An `on_step(step, stats)` callback for the training loop that logs the stats at that step.

        Steps up to `after_step` (already logged by the interrupted run that this one resumes) are skipped.
        """

        def on_step(step: int, stats: Mapping[str, float]) -> None:
            if step > after_step:
                self.log_metrics(run_id, {k: v for k, v in stats.items() if k != "step"}, step)

        return on_step

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._guarded(
            f"artifact {Path(path).name}", lambda: self.client.log_artifact(run_id, str(path), artifact_path)
        )

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._guarded(f"tag {key}", lambda key=key, value=value: self.client.set_tag(run_id, key, value))

    def finish(self, run_id: str, failed: bool = False) -> None:
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        self._guarded(f"run status {status}", lambda: self.client.set_terminated(run_id, status))

    def log_generator(
        self, run_id: str, generator: nn.Module, latent_dim: int, conditional: bool
    ) -> str | None:
        """Log G as an MLflow model: its URI, or None when the store has failed (see _log_generator_model)."""
        return self._guarded(
            "the generator model",
            lambda: self._log_generator_model(run_id, generator, latent_dim, conditional),
        )

    def _log_generator_model(
        self, run_id: str, generator: nn.Module, latent_dim: int, conditional: bool
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
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                generator,
                name=GENERATOR_ARTIFACT,
                signature=signature,
                input_example=example,
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        # Reopening the run with the fluent API leaves it FINISHED; the stages decide its final status.
        return info.model_uri


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_generator(model_uri: str) -> Any:
    """The logged generator back from MLflow (a callable torch module taking z[, labels])."""
    return mlflow.pytorch.load_model(model_uri)


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_lock_hashes(root: Path, paths: list[str]) -> dict[str, str]:
    """The md5 that dvc.lock records for each of `paths` (as some stage's output), where it has one."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") in paths and "md5" in out:
                found[out["path"]] = out["md5"]
    return found


def file_md5(path: str | Path) -> str:
    """The md5 of a file's bytes: what DVC records for a file output."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_tags(root: Path, data_paths: list[str], data_content_hash: str) -> dict[str, str]:
    """Tags that tie a run to its code and data version: git commit, DVC experiment, data hashes."""
    tags = {
        "mlflow.source.git.commit": git_commit(root),
        "data_content_hash": data_content_hash,
    }
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    for path, md5 in dvc_lock_hashes(root, data_paths).items():
        tags[f"dvc_md5:{path}"] = md5
    return tags
