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
import time
from collections.abc import Mapping
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
    """A connection to the tracking store and the project's MLflow experiment."""

    def __init__(self, experiment_name: str, root: Path | None = None):
        self.root = repo_root(root)
        self.uri = tracking_uri(self.root)
        mlflow.set_tracking_uri(self.uri)
        try:
            with _first_use_lock(self.uri):
                self.client = MlflowClient(self.uri)
                self.experiment_id = self._experiment(experiment_name)
        except MlflowException as exc:
            raise PipelineError(f"MLflow store {self.uri}: not reachable or not usable ({exc})") from None

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
        for start in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[start : start + 1000])

    def step_logger(self, run_id: str):
        """An `on_step(step, stats)` callback for the training loop that logs the stats at that step."""

        def on_step(step: int, stats: Mapping[str, float]) -> None:
            self.log_metrics(run_id, {k: v for k, v in stats.items() if k != "step"}, step)

        return on_step

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def finish(self, run_id: str, failed: bool = False) -> None:
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        self.client.set_terminated(run_id, status)

    def log_generator(self, run_id: str, generator: nn.Module, latent_dim: int, conditional: bool) -> str:
        """Log G with a tensor signature in torch.export's pt2 format (no pickle); return its model URI."""
        generator = generator.cpu().eval()
        z = np.random.default_rng(0).standard_normal((2, latent_dim)).astype(np.float32)
        inputs = [TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z")]
        example: tuple[np.ndarray, ...] = (z,)
        if conditional:
            inputs.append(TensorSpec(np.dtype(np.int64), (-1,), "labels"))
            example = (z, np.arange(2, dtype=np.int64))
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 28, 28), "images")])
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
