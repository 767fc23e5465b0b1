"""Where the MLflow store is, and whether it answers: without importing MLflow (or torch), so that the check
stage asks in milliseconds. `tracking` (the one module that talks to MLflow) uses the same functions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from gan_pipeline.errors import PipelineError, first_line

if TYPE_CHECKING:
    from gan_pipeline.config import TrackingConfig

DB_NAME = "mlflow.db"


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


# How long check_store and a reconnect attempt (tracking) wait for a tracking server's answer.
PROBE_TIMEOUT_S = 5
_MOVE_ASIDE = "move it aside and run again (the runs in it are lost, unless a copy of the file is restored)"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_sqlite(db: Path) -> None:
    """PipelineError when `db` exists but is not a usable MLflow database. Opened read-only: nothing is
    created or migrated (a missing or empty file is what the first stage to open the store starts from)."""
    if not db.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=20)) as con:
            problems = [row[0] for row in con.execute("PRAGMA quick_check(3)")]
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise PipelineError(
            f"{db}: not a readable MLflow database ({first_line(exc)}); {_MOVE_ASIDE}"
        ) from None
    if problems != ["ok"]:
        raise PipelineError(f"{db}: corrupt MLflow database ({'; '.join(problems)}); {_MOVE_ASIDE}")
    if tables and not {"experiments", "runs"} <= tables:
        raise PipelineError(f"{db}: not an MLflow database (no experiments and runs tables); {_MOVE_ASIDE}")


def ask_server(uri: str, experiment_name: str) -> None:
    """One request to the tracking server's API with a short timeout; OSError when it does not answer. A
    missing experiment (404) or refused credentials (401, 403) are answers."""
    query = urllib.parse.urlencode({"experiment_name": experiment_name})
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403, 404):
            raise


def check_store(cfg: TrackingConfig, root: Path | None = None) -> None:
    """PipelineError (one line) when the tracking store of the repository at `root` (default: the working
    directory's) does not answer or its file is corrupt. Cheap, and changes nothing: a SQLite store is
    opened read-only and checked without migrating; a server gets one request with a short timeout (asking
    for the experiment `cfg.experiment_name`); other stores are not checked."""
    uri = tracking_uri(repo_root(root))
    if (db := sqlite_path(uri)) is not None:
        check_sqlite(db)
    elif uri.startswith(("http://", "https://")):
        try:
            ask_server(uri, cfg.experiment_name)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"MLflow store {uri}: not reachable ({first_line(exc)})") from None
