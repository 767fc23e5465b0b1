"""Atomic writes, JSON, and weights as data (safetensors + a JSON of the model config)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gan_pipeline.errors import DataError, first_line

_UMASK = os.umask(0o22)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    Readers never see a half-written file, and an earlier `path` survives a failed write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (run the stage that writes it first)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def save_weights(path: str | Path, module: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write `module`'s state dict as safetensors, with `config` in the file's metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(config, sort_keys=True)})


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a state dict and its config written by `save_weights`; never unpickles anything."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: weights file not found (run the train stage first)")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a safetensors weights file ({exc})") from None
    if "config" not in metadata:
        raise DataError(f"{path}: safetensors file has no 'config' metadata (not written by gan-pipeline)")
    return state, json.loads(metadata["config"])


def load_module(
    path: str | Path, build: Callable[[dict[str, Any]], torch.nn.Module]
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a module from the config stored with its weights, load the weights strictly, set eval mode."""
    state, config = load_weights(path)
    module = build(config)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        reason = first_line(exc)
        raise DataError(f"{path}: weights do not fit the model its config describes ({reason})") from None
    return module.eval(), config


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Rows of equal keys as CSV with a header (`columns`, else the first row's keys), atomically."""
    keys = columns or (list(rows[0]) if rows else [])
    lines = [",".join(keys)] + [",".join(_csv_cell(row[k]) for k in keys) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def _csv_cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
