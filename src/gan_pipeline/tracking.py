"""The one module that talks to MLflow.

The store is anchored at the DVC repository's root: `sqlite:///<root>/mlflow.db` with artifacts in
`<root>/mlartifacts`, unless MLFLOW_TRACKING_URI names another store (a team server). Stages find their
run through the `run_id` that the train stage writes into its outputs, never by re-execution, so DVC's
run-cache restores stay linked to the run that made the outputs.

The train stage opens its run with `with run(...) as r:`, which sets the run's final status; the stages
after it log into that run with `with attach(...) as r:`. Both hand out a `Run`, which logs through an
`MlflowClient` for the store's URI: MLflow's global tracking URI is set only around the fluent calls that
read it, and put back afterwards.

A store that fails mid-run loses nothing that can be kept: the handle appends what the store did not take
to a journal file beside the run's outputs and sends it, in order, once the store answers again (during the
run, or when the next stage opens it). `check_store` tells cheaply whether the store answers.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LifecycleStage,
    Metric,
    Param,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError
from torch import nn

from gan_pipeline.errors import DataError, PipelineError, first_line
from gan_pipeline.io import read_json, write_text
from gan_pipeline.store import (  # noqa: F401  (check_store, repo_root, tracking_uri: called as tracking.* too)
    DB_NAME,
    ask_server,
    check_sqlite,
    check_store,
    repo_root,
    sqlite_path,
    tracking_uri,
)

if TYPE_CHECKING:
    from gan_pipeline.config import TrackingConfig

# mlflow.db and artifacts are git-ignored; the MLflow UI reads them from the repo root.
ARTIFACTS_DIR = "mlartifacts"
GENERATOR_ARTIFACT = "generator"
# What a run could not send to its store, kept beside the run's outputs (never a DVC output).
JOURNAL_NAME = "mlflow_journal.jsonl"


@dataclass(frozen=True)
class ChampionScore:
    """The evaluate metric that ranks an experiment's registered generators, and which way is better."""

    metric: str
    lower_is_better: bool

    def beats(self, new: float, old: float) -> bool:
        return new < old if self.lower_is_better else new > old


# Each experiment's generators are versions of one registered model, `<tracking.experiment_name>-<key>`
# (registered_model_name); the alias CHAMPION_ALIAS names the version with the best CHAMPION_SCORE (the
# Inception FID that digits and faces alike are scored with; lower is better). A version keeps its score
# as its tag `CHAMPION_SCORE.metric`.
CHAMPION_SCORE = ChampionScore("fid_inception", lower_is_better=True)
CHAMPION_ALIAS = "champion"
# The run's lineage tags that each model version carries too (the version's own tag names on the right).
VERSION_LINEAGE_TAGS = {
    "mlflow.source.git.commit": "git_commit",
    "dvc_exp_name": "dvc_exp_name",
    "dvc_exp_baseline_rev": "dvc_exp_baseline_rev",
    "data_content_hash": "data_content_hash",
    "experiment": "experiment",
    "generator_md5": "generator_md5",
}
# MLflow keeps at most 36 characters of a dataset's digest: the content hash's first 32 hex digits.
DATASET_DIGEST_HEX = 32


def registered_model_name(cfg: TrackingConfig, experiment: str) -> str:
    """The registered model that holds experiment `experiment`'s generators: `<experiment_name>-<key>`."""
    return f"{cfg.experiment_name}-{experiment}"


# --- where the store is ----------------------------------------------------------------------------------


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


# --- checking the store -----------------------------------------------------------------------------------


class _Store:
    """A connection to the tracking store and the project's MLflow experiment; PipelineError if the store
    does not answer now, before any training."""

    def __init__(self, cfg: TrackingConfig, root: Path | None):
        self.root = repo_root(root)
        self.uri = tracking_uri(self.root)
        self.experiment_name = cfg.experiment_name
        # MLflow's HTTP client retries each request (7 times, up to minutes, by default); the params say how
        # often, unless the environment already does.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(cfg.retry_backoff_s))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if (db := sqlite_path(self.uri)) is not None:
            check_sqlite(db)
        with self.answering():
            with _first_use_lock(self.uri):
                self.client = MlflowClient(self.uri)
                self.experiment_id = self._experiment(cfg.experiment_name)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """The block's store failures as the one-line PipelineError."""
        try:
            yield
        except (MlflowException, OSError, SQLAlchemyError) as exc:
            raise PipelineError(
                f"MLflow store {self.uri}: not reachable or not usable ({first_line(exc)})"
            ) from None

    def answers(self) -> bool:
        """Whether the store answers a quick request now (a local store is not asked: its calls fail fast)."""
        if not self.uri.startswith(("http://", "https://")):
            return True
        try:
            ask_server(self.uri, self.experiment_name)
        except (OSError, ValueError):
            return False
        return True

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == LifecycleStage.DELETED:
            # MLflow keeps a deleted experiment's name reserved: no new one can take it.
            self.client.restore_experiment(found.experiment_id)
            _warn(
                f"MLflow experiment '{name}' in {self.uri} was deleted (MLflow keeps its name reserved): "
                "restored it with its runs; to remove it for good, delete it and run `mlflow gc`"
            )
        if found is not None:
            return found.experiment_id
        location = (self.root / ARTIFACTS_DIR).as_uri() if _is_local_store(self.uri) else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def create_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """A new run with its params (flattened keys) and tags: its id. The run is named `name`, or
        `name-2`, `name-3`, ... when the experiment has runs of that name already."""
        created = self.client.create_run(self.experiment_id, run_name=self._unique(name), tags=dict(tags))
        self.client.log_batch(created.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return created.info.run_id

    def _unique(self, name: str) -> str:
        prefix = re.match(r"[\w.-]*", name).group()  # no quote or wildcard in the filter; exact match below
        found = self.client.search_runs(
            [self.experiment_id], f"attributes.run_name LIKE '{prefix}%'", run_view_type=ViewType.ALL
        )
        taken = {r.info.run_name for r in found}
        if name not in taken:
            return name
        return next(f"{name}-{n}" for n in range(2, len(taken) + 3) if f"{name}-{n}" not in taken)

    def find_run(self, run_id: str) -> tuple[Any | None, str]:
        """(the run, "") when the store has `run_id` and it is not deleted, else (None, why not)."""
        try:
            found = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None, f"is not in the MLflow store {self.uri}"
        if found.info.lifecycle_stage == LifecycleStage.DELETED:
            return None, f"was deleted in the MLflow store {self.uri}"
        return found, ""

    def reopen(self, run_id: str, params: Mapping[str, Any]) -> tuple[int, dict[str, str]] | str:
        """Reopen an interrupted run of this experiment: (the last step it has metrics for, the params whose
        value changed), or why it cannot be (not in the store, deleted, of another experiment)."""
        found, why = self.find_run(run_id)
        if found is None:
            return why
        if found.info.experiment_id != self.experiment_id:
            return f"belongs to another MLflow experiment than '{self.experiment_name}'"
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        changed = _log_new_params(self.client, run_id, found.data.params, params)
        history = self.client.get_metric_history(run_id, "loss_d")
        return max((m.step for m in history), default=0), changed


def _log_new_params(
    client: MlflowClient, run_id: str, logged: Mapping[str, str], params: Mapping[str, Any]
) -> dict[str, str]:
    """Log the params that the run lacks; return those it has with another value (MLflow params cannot
    change)."""
    new = {k: str(v) for k, v in params.items() if k not in logged}
    if new:
        client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
    return {k: str(v) for k, v in params.items() if k in logged and logged[k] != str(v)}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- the journal of what the store did not take -----------------------------------------------------------

# Errors with which a store that answers refuses a record (a deleted run, a param logged with another
# value): sending it again cannot succeed, so the journal drops it, saying so.
# While the store does not answer, how often a run tries to send what it kept in its journal.
RECONNECT_EVERY_S = 10.0
_REFUSALS = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "INVALID_STATE", "BAD_REQUEST")


class Journal:
    """What a run could not send to its store, kept in a local JSONL file (`path`) until it can: one record
    per line (metrics with their steps and timestamps, params, tags, an artifact's path, the run's end
    status), each appended and fsync'd, so that a crash loses at most the line being written; `replay`
    sends them in order and removes the file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash as it was written
                records.append(json.loads(line))
        return records

    def replay(self, client: MlflowClient) -> int:
        """Send the records in order, then remove the file: how many were sent. On a store failure the
        records not sent yet stay (the file is rewritten atomically) and the error goes on."""
        records = self.records()
        done = 0
        try:
            for group in _groups(records):
                _send_group(client, group)
                done += len(group)
        except (MlflowException, OSError, SQLAlchemyError):
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in records[done:]))
            raise
        self.path.unlink(missing_ok=True)
        return done


def _groups(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The records in order, consecutive metrics of one run together (sent in batches, not one by one)."""
    group: list[dict[str, Any]] = []
    for record in records:
        if group and not (
            record["op"] == group[-1]["op"] == "metrics" and record["run_id"] == group[-1]["run_id"]
        ):
            yield group
            group = []
        group.append(record)
    if group:
        yield group


def _send_group(client: MlflowClient, group: list[dict[str, Any]]) -> None:
    """Send one group of journal records; a record that the store refuses is dropped with a warning."""
    first = group[0]
    run_id, op = first["run_id"], first["op"]
    try:
        if op == "metrics":
            metrics = [Metric(k, v, ts, step) for r in group for k, v, ts, step in r["metrics"]]
            for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
                client.log_batch(run_id, metrics=metrics[start : start + 1000])
        elif op == "params":
            client.log_batch(run_id, params=[Param(k, v) for k, v in first["params"].items()])
        elif op == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in first["tags"].items()])
        elif op == "artifact":
            if not Path(first["path"]).exists():
                _warn(f"MLflow run {run_id}: artifact {first['path']} is gone: not logged")
                return
            client.log_artifact(run_id, first["path"], first.get("artifact_path"))
        elif op == "status":
            client.set_terminated(run_id, first["status"], first["end_time"])
        elif op in _SENDERS:
            _SENDERS[op](client, run_id, first)
    except MlflowException as exc:
        if exc.error_code not in _REFUSALS:
            raise
        _warn(f"MLflow run {run_id}: the store refused the kept {op} ({first_line(exc)}): dropped")


def _send_snapshot(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """One in-training check as an MLflow 3 LoggedModel of the run (named `<experiment>-step<step>`), its
    scores logged as the run's metrics at that step and linked to the model (`model_id`), so that the UI
    and search_logged_models rank a run's snapshots by score. Its weights are not uploaded: the kept one is
    the run's generator model, which names its step (`best_step`)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    tags = {"step": str(record["step"]), "kind": "in-training check"}
    model = client.create_logged_model(experiment_id, record["name"], source_run_id=run_id, tags=tags)
    metrics = [Metric(k, float(v), record["time"], record["step"], model_id=model.model_id)
               for k, v in record["metrics"].items()]  # fmt: skip
    client.log_batch(run_id, metrics=metrics)
    client.finalize_logged_model(model.model_id, "READY")


def _send_stage_params(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """A later stage's params (sample.*, evaluate.*) logged once; a stage that re-runs into the run with
    another value tags it `rerun_with.<key>`, as a resumed train does `resumed_with.<key>`."""
    changed = _log_new_params(client, run_id, client.get_run(run_id).data.params, record["params"])
    if changed:
        client.log_batch(run_id, tags=[RunTag(f"rerun_with.{k}", v) for k, v in changed.items()])


def _send_dataset(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """A prepared split as the run's dataset input (MLflow's Dataset column): a metadata-only dataset
    named `record["name"]`, its digest the content hash's first DATASET_DIGEST_HEX hex digits, its source
    the prepared file, and input tags for the context, the full content hash and the raw source."""
    dataset = MetaDataset(
        LocalArtifactDatasetSource(record["source"]), name=record["name"], digest=record["digest"]
    )
    tags = [InputTag(k, str(v)) for k, v in record["tags"].items()]
    client.log_inputs(run_id, [DatasetInput(Dataset(**dataset.to_dict()), tags)])


def _run_model_id(client: MlflowClient, run_id: str) -> tuple[str | None, str | None]:
    """(the model URI, the LoggedModel id) of the run's generator (its `generator_model_uri` tag), or Nones
    when the run has none yet."""
    uri = client.get_run(run_id).data.tags.get("generator_model_uri")
    if not uri:
        return None, None
    return uri, uri.removeprefix("models:/") if uri.startswith("models:/m-") else None


def _send_scores(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """The evaluate stage's scores as run metrics linked to the run's generator LoggedModel (`model_id`, so
    that search_logged_models ranks generators by score) and to the evaluation dataset."""
    _, model_id = _run_model_id(client, run_id)
    dataset = record.get("dataset") or {}
    metrics = [
        Metric(k, v, record["time"], record["step"], model_id=model_id,
               dataset_name=dataset.get("name"), dataset_digest=dataset.get("digest"))
        for k, v in record["metrics"].items()
    ]  # fmt: skip
    client.log_batch(run_id, metrics=metrics)


def _send_registration(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """Register the run's generator as a version of `record["name"]` (once: a version of this run and model
    is found again), tag it with its score and the run's lineage, and move CHAMPION_ALIAS to it when it
    beats the current champion's score (or there is none)."""
    name, score = record["name"], record["score"]
    model_uri, model_id = _run_model_id(client, run_id)
    if model_uri is None:
        _warn(f"MLflow run {run_id}: no generator model (tag generator_model_uri): not registered as {name}")
        return
    run_tags = client.get_run(run_id).data.tags
    tags = {ours: run_tags[theirs] for theirs, ours in VERSION_LINEAGE_TAGS.items() if theirs in run_tags}
    tags["mlflow_run_id"] = run_id
    if score is not None:
        tags[CHAMPION_SCORE.metric] = str(score)
    version = _model_version(client, name, run_id, model_uri, model_id, tags)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    if score is None:
        _warn(f"{name} v{version.version}: no {CHAMPION_SCORE.metric}: alias {CHAMPION_ALIAS} not moved")
        return
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:  # no champion yet
        champion = None
    held = champion.tags.get(CHAMPION_SCORE.metric) if champion is not None else None
    if (
        champion is None
        or champion.version == version.version
        or held is None
        or (CHAMPION_SCORE.beats(float(score), float(held)))
    ):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)


def _model_version(client: MlflowClient, name: str, run_id: str, model_uri: str, model_id: str | None,
                   tags: dict[str, str]) -> Any:  # fmt: skip
    """The version of registered model `name` for the run's model, created (with the model) if missing."""
    try:
        client.create_registered_model(name, description="gan-pipeline generators of one experiment")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if version.source == model_uri:
            return version
    # MLflow resolves a `models:/<model_id>` source in the store of the global tracking URI.
    with _fluent_tracking_uri(client.tracking_uri):
        return client.create_model_version(name, model_uri, run_id, tags=tags, model_id=model_id)


def _send_kept_model(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """Log the generator whose weights file the journal kept, and tag the run with its model URI."""
    from gan_pipeline.sampling import load_generator  # the models' code, only for a model to send

    weights = Path(record["weights"])
    if not weights.exists():
        _warn(f"MLflow run {run_id}: generator weights {weights} are gone: the model is not logged")
        return
    generator, spec, model = load_generator(weights)
    status = client.get_run(run_id).info.status  # the fluent API that logs a model ends the run FINISHED
    model_uri = _log_generator_model(
        record["uri"], run_id, generator, model["latent_dim"], spec.conditional, spec.value_range
    )
    client.set_tag(run_id, "generator_model_uri", model_uri)
    if status != RunStatus.to_string(RunStatus.FINISHED):
        client.update_run(run_id, status=status)


# The journal's ops that one function sends (op -> sender(client, run_id, record)).
def _send_image(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """An image of the run at a step (MLflow's images over steps: the UI's step slider), once: an image of
    that key and step already in the run (a replay after a partial send) is not logged again."""
    key, step = record["key"], record["step"]
    prefix = f"{key}+step+{step}+"  # MLflow names them images/<key>+step+<step>+timestamp+<ms>+<uuid>
    if any(Path(f.path).name.startswith(prefix) for f in client.list_artifacts(run_id, "images")):
        return
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(record["png"]))))
    client.log_image(run_id, image, key=key, step=step, timestamp=record["time"], synchronous=True)


_SENDERS: dict[str, Callable[[MlflowClient, str, dict[str, Any]], None]] = {
    "model": _send_kept_model,
    "snapshot": _send_snapshot,
    "image": _send_image,
    "stage_params": _send_stage_params,
    "dataset": _send_dataset,
    "scores": _send_scores,
    "register": _send_registration,
}


# --- the run handle --------------------------------------------------------------------------------------


class Terminated(SystemExit):
    """SIGTERM while a run is open: raised in the main thread so that the run is marked KILLED; uncaught,
    the process exits with 128 + SIGTERM, as a shell reports a process that SIGTERM ended."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class Run:
    """An MLflow run to log into: `id`, `uri` (the store's tracking URI), and for a run opened by `run`,
    `resumed` and `logged_until` (the last step that the interrupted run it reopened has metrics for).

    If the store fails after the run was opened, the handle goes offline: what is logged through it goes to
    its journal (`journal.path`), training goes on, and every RECONNECT_EVERY_S the journal is sent again;
    once the store answers, the handle is online again. `not_logged` lists what is in the journal from this
    handle; `run` and `attach` print that as a warning when their block ends.
    """

    def __init__(self, store: _Store, run_id: str, journal: Journal, resumed: bool = False,
                 logged_until: int = 0):  # fmt: skip
        self._store = store
        self._client = store.client
        self.id = run_id
        self.uri = store.uri
        # run.json's form of the URI: the repository's own store relative to its root, so that no machine
        # path lands in an output (load_generator resolves it against the repository again).
        self.recorded_uri = (
            f"sqlite:///{DB_NAME}" if store.uri == f"sqlite:///{store.root / DB_NAME}" else store.uri
        )
        self.experiment_id = store.experiment_id
        self.journal = journal
        self.resumed = resumed
        self.logged_until = logged_until
        self.offline: str | None = None  # why the store stopped answering, while it does not
        self._failure: str | None = None  # the last such reason
        self.not_logged: list[str] = []  # what this handle did not send (and kept, but for `_lost`)
        self._lost: set[str] = set()  # what could not be kept in the journal
        self._retry_at = 0.0  # time.monotonic() of the next attempt to send the journal

    def _go_offline(self, exc: BaseException) -> None:
        self.offline = self._failure = first_line(exc)
        self._retry_at = time.monotonic() + RECONNECT_EVERY_S
        _warn(
            f"MLflow store {self.uri} failed ({self.offline}); going on, keeping what is not logged in "
            f"{self.journal.path} and sending it once the store answers again"
        )

    def send_journal(self) -> None:
        """Send what the journal holds (from this handle or an earlier process) if the store answers; online
        again once it is sent."""
        self._retry_at = time.monotonic() + RECONNECT_EVERY_S
        if self.journal.path.exists():
            if not self._store.answers():
                return
            try:
                sent = self.journal.replay(self._client)
            except (MlflowException, OSError, SQLAlchemyError):
                return
            print(f"MLflow store {self.uri} answers again: sent the {sent} records kept in "
                  f"{self.journal.path}", file=sys.stderr)  # fmt: skip
        self.offline = None
        self.not_logged = [what for what in self.not_logged if what in self._lost]

    def _send(self, what: str, record: dict[str, Any] | None, call: Callable[[], Any]) -> Any:
        """Make one logging call; offline, or when the store fails, keep `record` in the journal (None: the
        call cannot be kept) and list `what` in not_logged."""
        if self.offline is not None and time.monotonic() >= self._retry_at:
            self.send_journal()
        if self.offline is None:
            try:
                return call()
            except (MlflowException, OSError, SQLAlchemyError) as exc:
                self._go_offline(exc)
        if record is None:
            self._lost.add(what)
        else:
            self.journal.append({"run_id": self.id, **record})
        self.not_logged.append(what)
        return None

    def _record(self, what: str, record: dict[str, Any]) -> None:
        self._send(what, record, lambda: _send_group(self._client, [{"run_id": self.id, **record}]))

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
        kept = (
            f"; kept in {self.journal.path}, sent by the next stage that logs into the run"
            if self.journal.path.exists()
            else ""
        )
        return f"MLflow store {self.uri} failed ({self._failure}): not logged: {'; '.join(parts)}{kept}"

    def _warn_if_not_logged(self) -> None:
        if report := self.report():
            _warn(report)

    def log_step(self, step: int, stats: Mapping[str, float]) -> None:
        """The training loop's `on_step(step, stats)`: log the stats (less `step`) at that step, skipping
        steps up to `logged_until`, which the interrupted run that this one resumes logged already."""
        if step > self.logged_until:
            self.log_metrics({k: v for k, v in stats.items() if k != "step"}, step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Log numbers (non-numeric values are skipped) at `step`."""
        now = int(time.time() * 1000)
        batch = [
            [k, float(v), now, step]
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        self._record(f"metrics at step {step}", {"op": "metrics", "metrics": batch})

    def log_snapshot(self, name: str, step: int, scores: Mapping[str, float]) -> None:
        """An in-training check's `scores` (e.g. monitor_fid_classifier) as a LoggedModel `name` of this
        run at `step` (see _send_snapshot); skipped up to `logged_until`, like log_step."""
        if step <= self.logged_until:
            return
        numbers = {
            k: float(v) for k, v in scores.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        record = {
            "op": "snapshot",
            "name": name,
            "step": step,
            "metrics": numbers,
            "time": int(time.time() * 1000),
        }
        self._record(f"snapshot {name}", record)

    def log_image(self, key: str, image: np.ndarray | Image.Image, step: int) -> None:
        """A picture (PIL, or uint8 (H, W) or (H, W, 3)) as the run's image `key` at `step`, which the
        MLflow UI shows with a step slider; journaled as PNG bytes; skipped up to `logged_until`, like
        log_step."""
        if step <= self.logged_until:
            return
        png = io.BytesIO()
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(png, format="PNG")
        record = {
            "op": "image",
            "key": key,
            "step": step,
            "png": base64.b64encode(png.getvalue()).decode("ascii"),
            "time": int(time.time() * 1000),
        }
        self._record(f"image {key} at step {step}", record)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        record = {"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path}
        self._record(f"artifact {Path(path).name}", record)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if tags:
            self._record(
                f"tags {', '.join(tags)}", {"op": "tags", "tags": {k: str(v) for k, v in tags.items()}}
            )

    def log_generator(
        self,
        generator: nn.Module,
        latent_dim: int,
        conditional: bool,
        value_range: tuple[float, float],
        weights: Path | None = None,
    ) -> str | None:
        """Log G as an MLflow model: its URI, or None when the store has failed (see _log_generator_model).
        With `weights`, G's weights file (written by io.save_weights), a model the store does not take is
        kept in the journal as that path, and logged with a `generator_model_uri` tag once it is sent."""
        record = None
        if weights is not None:
            record = {"op": "model", "weights": str(Path(weights).resolve()), "uri": self.uri}
        return self._send(
            "the generator model",
            record,
            lambda: _log_generator_model(self.uri, self.id, generator, latent_dim, conditional, value_range),
        )

    def generator_model_uri(self) -> str | None:
        """The model URI of the generator the run has logged (its `generator_model_uri` tag), or None when
        it has none or the store does not answer."""
        return self._send("the generator model URI", None, lambda: _run_model_id(self._client, self.id)[0])

    def log_stage_params(self, params: Mapping[str, Any]) -> None:
        """A later stage's params (e.g. sample.*, evaluate.*; see _send_stage_params)."""
        record = {"op": "stage_params", "params": {k: str(v) for k, v in params.items()}}
        self._record(f"params {', '.join(params)}", record)

    def log_dataset(self, dataset: Mapping[str, str], context: str) -> None:
        """A prepared split as the run's dataset input in `context` ("training", "evaluation"):
        `dataset` has its name, content_hash, source (the prepared file) and raw_source."""
        self._record(f"dataset {dataset['name']}", {"op": "dataset", **_dataset_record(dataset, context)})

    def log_scores(
        self, metrics: Mapping[str, Any], step: int, dataset: Mapping[str, str] | None = None
    ) -> None:
        """The evaluation's numbers at `step`, linked to the run's generator model and to `dataset`."""
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        linked = _dataset_record(dataset, "evaluation") if dataset else None
        record = {"op": "scores", "metrics": numbers, "step": step, "time": int(time.time() * 1000),
                  "dataset": linked and {"name": linked["name"], "digest": linked["digest"]}}  # fmt: skip
        self._record(f"scores at step {step}", record)

    def register_generator(self, name: str, metrics: Mapping[str, Any]) -> None:
        """Register the run's generator as a version of model `name`, moving CHAMPION_ALIAS to it when its
        CHAMPION_SCORE in `metrics` beats the champion's (see _send_registration)."""
        score = metrics.get(CHAMPION_SCORE.metric)
        record = {"op": "register", "name": name, "score": None if score is None else float(score)}
        self._record(f"model version of {name}", record)

    def _end(self, status: int) -> None:
        name = RunStatus.to_string(status)
        self._retry_at = 0.0  # one more attempt to send the journal first
        end = {"op": "status", "status": name, "end_time": int(time.time() * 1000)}
        self._record(f"run status {name}", end)


@contextlib.contextmanager
def _signals_end_run() -> Iterator[list[int]]:
    """For the block, SIGTERM raises Terminated and SIGINT KeyboardInterrupt in the main thread; yields the
    signals received, so that a run they end is KILLED whatever the interrupted code made of the exception.
    Each handler replaced is put back afterwards, and already at its signal's first arrival, so that a second
    one acts as it did before; an ignored signal stays ignored. Python runs signal handlers in the main
    thread only, so other threads get none."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN:
            continue
        # None: installed from outside Python; the default action is all that can be restored.
        previous[signum] = signal.SIG_DFL if handler is None else handler

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.signal(signum, previous[signum])
        if signum == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt

    for signum in previous:
        signal.signal(signum, interrupt)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def run(
    cfg: TrackingConfig,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    resume: str | None = None,
    root: Path | None = None,
    journal: Path | None = None,
) -> Iterator[Run]:
    """A run in the store of the repository at `root` (default: the working directory's), with its params
    (flattened keys) and tags: `resume`, the run id of an interrupted run, is reopened if the store still has
    it (a resumable param that grew, such as epochs, becomes a `resumed_with.<key>` tag, since MLflow params
    cannot change), else a new run is created, saying why. What the store does not take is kept in the
    journal file `journal` (default: JOURNAL_NAME at the root) and sent first, before the run opens, and
    whenever the store answers again.

    The run ends FINISHED when the block does, FAILED when it raises, KILLED on SIGINT or SIGTERM (which
    raise KeyboardInterrupt and Terminated for the block's duration); then what did not reach the store is
    printed as a warning. PipelineError, before the block, when the store does not answer.
    """
    with _signals_end_run() as signals:
        store = _Store(cfg, root)
        kept = Journal(journal or store.root / JOURNAL_NAME)
        with store.answering():
            _send_earlier_journal(store, kept)
            reopened = store.reopen(resume, params) if resume is not None else None
            if isinstance(reopened, tuple):
                handle = Run(store, resume, kept, resumed=True, logged_until=reopened[0])
            else:
                handle = Run(store, store.create_run(name, params, tags), kept)
                if reopened is not None:
                    _warn(
                        f"MLflow run {resume} of the checkpoint {reopened}: "
                        f"logging into a new run {handle.id}"
                    )
        if isinstance(reopened, tuple):
            handle.set_tags({f"resumed_with.{k}": v for k, v in reopened[1].items()})
        try:
            yield handle
        except BaseException as exc:
            killed = signals or isinstance(exc, KeyboardInterrupt | Terminated)
            handle._end(RunStatus.KILLED if killed else RunStatus.FAILED)
            raise
        else:
            handle._end(RunStatus.KILLED if signals else RunStatus.FINISHED)
        finally:
            handle._warn_if_not_logged()


def _send_earlier_journal(store: _Store, journal: Journal) -> None:
    """Send what an earlier process kept in `journal`; MlflowException etc. when the store fails."""
    if journal.path.exists():
        sent = journal.replay(store.client)
        print(f"MLflow store {store.uri}: sent the {sent} records kept in {journal.path}", file=sys.stderr)


def _dataset_record(dataset: Mapping[str, str], context: str) -> dict[str, Any]:
    content_hash = dataset["content_hash"]
    return {
        "name": dataset["name"],
        "digest": content_hash.split(":", 1)[-1][:DATASET_DIGEST_HEX],
        "source": dataset["source"],
        "tags": {
            "mlflow.data.context": context,
            "content_hash": content_hash,
            "raw_source": dataset["raw_source"],
        },
    }


RUN_RECORD_KEYS = ("run_id", "experiment", "steps")


def read_run_record(path: str | Path) -> dict[str, Any]:
    """The train stage's run.json at `path`; DataError when it is no JSON object with a run_id (a
    non-empty string), experiment and steps."""
    record = read_json(path)
    if not isinstance(record, dict):
        record = {}
    missing = [key for key in RUN_RECORD_KEYS if key not in record]
    if not missing and not (isinstance(record["run_id"], str) and record["run_id"]):
        missing = [f"run_id (found {record['run_id']!r})"]
    if missing:
        stage = f"train@{record.get('experiment', '<experiment>')}"
        raise DataError(
            f"{path}: expected the train stage's record with run_id, experiment and steps, missing: "
            f"{', '.join(missing)} (train again: dvc repro --force {stage})"
        )
    return record


@contextlib.contextmanager
def attach(
    cfg: TrackingConfig,
    run_id: str,
    root: Path | None = None,
    journal: Path | None = None,
    source: str = "run_id",
) -> Iterator[Run]:
    """The run `run_id` (from the train stage's run.json) in the store of the repository at `root` (default:
    the working directory's), to log into without changing its status; at the end of the block, what did
    not reach the store is printed as a warning. PipelineError, before the block, when the store does not
    answer or lacks the run or the run is deleted (`source` names where the run id came from). What an
    earlier stage kept in the journal `journal` (default: JOURNAL_NAME at the root) is sent first.

    The store is found as the train stage finds it, not from run.json's `tracking_uri`: a copy of the
    project or a run-cache restore carries run.json from another checkout, whose store may be gone.
    """
    store = _Store(cfg, root)
    kept = Journal(journal or store.root / JOURNAL_NAME)
    with store.answering():
        _send_earlier_journal(store, kept)
        found, why = store.find_run(run_id)
    if found is None:
        raise PipelineError(
            f"{source}: MLflow run {run_id} {why} (restore it, or train again: dvc repro --force "
            "train@<experiment>)"
        )
    handle = Run(store, run_id, kept)
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


# --- reading runs back (the comparison page) -------------------------------------------------------------


@dataclass
class RunSummary:
    """What the comparison page shows of a run: its name, params, latest metrics and its images over steps
    (`images[key][step]`: PNG bytes, as log_image logged them)."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    images: dict[str, dict[int, bytes]]


def find_runs(uri: str, experiment_name: str, selector: str) -> list[str]:
    """The ids of the runs that `selector` names: a run id, a run name, or `dvc:<name>` (the runs that the
    DVC experiment <name> made: its `dvc_exp_name` tag). DataError when none matches."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise DataError(f"{uri}: no MLflow experiment {experiment_name!r} (has a train stage run?)")
    if selector.startswith("dvc:"):
        name = selector.removeprefix("dvc:")
        found = [
            r
            for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("dvc_exp_name") == name
        ]
    else:
        runs = client.search_runs([experiment.experiment_id])
        found = [r for r in runs if selector in (r.info.run_id, r.info.run_name)]
    if not found:
        raise DataError(
            f"{uri}: no run of experiment {experiment_name!r} is {selector!r} (expected a run id, a run name "
            "or dvc:<DVC experiment name>)"
        )
    return [r.info.run_id for r in sorted(found, key=lambda r: r.info.start_time)]


def run_summary(uri: str, run_id: str) -> RunSummary:
    """The run's name, params, metrics and images over steps, read from the store at `uri`."""
    import tempfile

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    images: dict[str, dict[int, bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for entry in client.list_artifacts(run_id, "images"):
            name = Path(entry.path).name
            parts = name.split("+")  # <key>+step+<step>+timestamp+<ms>+<uuid>.png
            if not name.endswith(".png") or len(parts) < 3 or parts[1] != "step":
                continue
            local = client.download_artifacts(run_id, entry.path, tmp)
            images.setdefault(parts[0], {})[int(parts[2])] = Path(local).read_bytes()
    return RunSummary(run_id, run.info.run_name, dict(run.data.params), dict(run.data.metrics), images)


# --- the generator as an MLflow model --------------------------------------------------------------------


class _Detached(nn.Module):
    """G whose images carry no autograd graph (what the MLflow model exports)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    # named arguments, not *inputs: MLflow gives torch.export one dynamic batch dimension per argument
    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = self.generator(z) if labels is None else self.generator(z, labels)
        return images.detach()


class _GeneratorFlavor:
    """The MLflow flavor interface (`save_model`) that logs G as mlflow.pytorch does, with this module as
    its python_function loader: `mlflow.pytorch.load_model` gives the torch module (float images in the
    model's value range), `mlflow.pyfunc.load_model` and `mlflow models serve` give uint8 images."""

    __name__ = "mlflow.pytorch"  # the flavor MLflow records for the LoggedModel

    @staticmethod
    def save_model(path: str, mlflow_model: Any, value_range: tuple[float, float], **kwargs: Any) -> None:
        mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        # mlflow.pytorch's own python_function flavor (absent for a pt2 model of two inputs) takes one
        # tensor and answers with floats: ours replaces it
        mlflow.pyfunc.add_to_model(
            mlflow_model,
            loader_module=__name__,  # _load_pyfunc below
            data=mlflow_model.flavors["pytorch"]["model_data"],
            conda_env="conda.yaml",
            python_env="python_env.yaml",
            value_range=[float(v) for v in value_range],
        )
        mlflow_model.save(os.path.join(path, "MLmodel"))


class _UInt8Generator:
    """The python_function model of a logged G: `predict({"z": (N, latent_dim) float32[, "labels": (N,)
    int64]})` -> uint8 images (N, H, W) or (N, H, W, 3), the same 0..255 scale for every model whatever its
    value range."""

    def __init__(self, generator: Any, value_range: tuple[float, float]):
        self.generator, self.value_range = generator, value_range

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        from gan_pipeline.data.loading import to_uint8

        z = torch.as_tensor(np.asarray(model_input["z"], dtype=np.float32))
        labels = model_input.get("labels") if hasattr(model_input, "get") else None
        with torch.inference_mode():
            if labels is None:
                images = self.generator(z)
            else:
                images = self.generator(z, torch.as_tensor(np.asarray(labels, dtype=np.int64)))
        return to_uint8(images, self.value_range).numpy()


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> _UInt8Generator:
    """MLflow's python_function loader for a logged G (`path`: the model's data folder)."""
    root = Path(path).parent
    flavor = mlflow.models.Model.load(root / "MLmodel").flavors[mlflow.pyfunc.FLAVOR_NAME]
    return _UInt8Generator(mlflow.pytorch.load_model(str(root)), tuple(flavor["value_range"]))


def _log_generator_model(uri: str, run_id: str, generator: nn.Module, latent_dim: int, conditional: bool,
                         value_range: tuple[float, float]) -> str:  # fmt: skip
    """Log G with a tensor signature in torch.export's pt2 format (no pickle); return its model URI. The
    exported module's images are detached from autograd: a loaded generator only generates. Its
    python_function flavor (this module's _load_pyfunc) answers with uint8 images, so that
    `mlflow models serve` serves it; the signature says what it takes (z[, labels])."""
    generator = _Detached(generator.cpu().eval())
    z = np.random.default_rng(0).standard_normal((2, latent_dim)).astype(np.float32)
    inputs = [TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z")]
    example: tuple[np.ndarray, ...] = (z,)
    if conditional:
        inputs.append(TensorSpec(np.dtype(np.int64), (-1,), "labels"))
        example = (z, np.arange(2, dtype=np.int64))
    with torch.no_grad():
        images = generator(*(torch.from_numpy(x) for x in example))
    # what serving answers: uint8 (N, H, W) or (N, H, W, 3)
    image_shape = tuple(images.shape[2:]) if images.shape[1] == 1 else (*images.shape[2:], images.shape[1])
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape), "images")])
    signature = ModelSignature(inputs=Schema(inputs), outputs=outputs)
    # Model.log logs into the fluent API's active run, in the store of the global tracking URI.
    with _fluent_tracking_uri(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.models.Model.log(
            name=GENERATOR_ARTIFACT,
            artifact_path=None,
            flavor=_GeneratorFlavor,
            flavor_name="mlflow.pytorch",
            pytorch_model=generator,
            value_range=value_range,
            signature=signature,
            input_example=example,  # torch.export traces G with it
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"value_range": [float(v) for v in value_range]},
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
