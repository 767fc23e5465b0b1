"""Atomic writes, JSON, and weights as data (safetensors + a JSON of the model config)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan_pipeline.errors import DataError, first_line

if TYPE_CHECKING:
    import torch

# torch and safetensors load in the functions that read and write weights: the stages that only read params
# and JSON (check, report) start without torch.

# Every output is rw-r--r--, whoever writes it: mkstemp makes 0600 and safetensors' save_file replaces the
# file with a 0600 one, so a direct run and `dvc repro` would otherwise leave different modes.
OUTPUT_MODE = 0o644
# What a full disk, a quota, a file size limit or a folder we may not write to raise while a writer writes
# the temporary file; other errors of the writer (a bad value, a file it reads) are its own and pass as they
# are.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (mode 0644), on error it is
    removed.

    Readers never see a half-written file, and an earlier `path` survives a failed write. A folder that
    cannot be created or written to, a full disk or a read-only file system is a one-line DataError naming
    `path`.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming(path, tmp_path):
            yield tmp_path
        with _naming(path):
            os.chmod(tmp_path, OUTPUT_MODE)  # after the writer, which may have replaced the file
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """OSError -> DataError naming `path`: any of our own file operations (`tmp` None), or while a writer
    writes `tmp` one of _WRITE_ERRNOS that is not about some other file."""
    try:
        yield
    except OSError as exc:
        if tmp is not None:
            other_file = exc.filename is not None and Path(exc.filename) != tmp
            if exc.errno not in _WRITE_ERRNOS or other_file:
                raise
        reason = exc.strerror or first_line(exc)
        if exc.filename is not None and Path(exc.filename) in path.parents:
            reason += f": {exc.filename}"  # a folder on the way (e.g. one that is a file)
        kept = "; the earlier file is kept" if path.is_file() else ""
        raise DataError(f"{path}: cannot write ({reason}){kept}") from None


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


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """`tensors` and string `metadata` as a safetensors file, atomically, the same bytes for the same input.

    safetensors writes its `__metadata__` keys in a random order (a hash map's) that changes from process to
    process, so the header is written again here with them sorted: identical runs give identical files (and
    md5s in dvc.lock). The bytes are written from Python, so a full disk is an OSError like any other.
    """
    from safetensors.torch import save as safetensors_bytes

    data = safetensors_bytes(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the tensor data stays 8-byte aligned, as safetensors writes it
    with atomic_path(path) as tmp:
        tmp.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])


def save_weights(path: str | Path, module: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write `module`'s state dict as safetensors, with `config` in the file's metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    write_safetensors(path, state, {"config": json.dumps(config, sort_keys=True)})


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a state dict and its config written by `save_weights`; never unpickles anything."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

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
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: its 'config' metadata is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: its 'config' metadata is not a JSON object, found {config!r}")
    return state, config


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
