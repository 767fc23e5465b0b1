"""One trainer per checkpoint, and no trainer outliving the `dvc` process that started it (Linux).

The lock is `<checkpoint>.lock`, an flock held by the training process itself (not by dvc), with its PID
written in it: a second trainer on the same checkpoint refuses to start and names that PID. The kernel
drops an flock when its process dies, however it dies, so a lock is never left stale; the file is removed
on a clean exit.

DVC runs a stage's command through a shell (`sh -c`), so the trainer's parent is either dvc itself (when
the shell execs the command) or a shell that stays when dvc is killed (and under torchrun, torchrun's
agent). `end_with_dvc` finds the dvc process as the nearest ancestor whose environment lacks the
DVC_STAGE variable that DVC sets for the command, and a thread ends this process with SIGTERM within
WATCH_EVERY_S of that one going. (prctl(PR_SET_PDEATHSIG) would not do: it covers the parent alone, and
fires when the parent's *thread* that started the command ends, which need not be the process ending.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gan_pipeline.errors import PipelineError

WATCH_EVERY_S = 1.0


def lock_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".lock")


@contextlib.contextmanager
def one_trainer(checkpoint: Path) -> Iterator[None]:
    """Hold `<checkpoint>.lock` for the block; PipelineError, naming the PID that holds it, when another
    process trains from the same checkpoint. A folder made for the lock is removed again if it stays empty."""
    path = lock_path(checkpoint)
    made_folder = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PipelineError(
                f"{checkpoint}: another trainer (PID {holder}) is training from this checkpoint; wait for "
                f"it to end, or stop it (kill {holder}), then run again"
            ) from None
        if _is_same_file(fd, path):
            break
        os.close(fd)  # locked a file that its last holder removed as it released it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it, so no one locks a file about to go
        os.close(fd)
        if made_folder:
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


# --- ending with dvc ------------------------------------------------------------------------------------


def _environ_has(pid: int, name: str, value: str) -> bool | None:
    """Whether process `pid`'s environment (at its start) sets `name` to `value`; None when unreadable."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return f"{name}={value}".encode() in env.split(b"\0")


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the field after the state; comm may hold spaces


def _started(pid: int) -> str | None:
    """Process `pid`'s start time (clock ticks since boot), telling it from a later process with its PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def dvc_process() -> int | None:
    """The PID of the dvc process that runs this stage, or None when DVC did not start this process."""
    stage = os.environ.get("DVC_STAGE")
    if stage is None:
        return None
    pid = os.getppid()
    while pid > 1 and _environ_has(pid, "DVC_STAGE", stage):  # the shell, torchrun, ...: started by dvc
        pid = _parent_of(pid) or 1
    return pid if pid > 1 else None


def end_with_dvc() -> int | None:
    """When DVC started this process, SIGTERM it once the dvc process is gone (killed alone, its children
    would go on): the PID watched, or None."""
    owner = dvc_process()
    if owner is None:
        return None
    started = _started(owner)

    def watch() -> None:
        while _started(owner) == started:
            time.sleep(WATCH_EVERY_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-dvc", daemon=True).start()
    return owner
