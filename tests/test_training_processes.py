"""One trainer per checkpoint (a lock that names its holder's PID, never left stale) and no trainer that
outlives the dvc process that started it, through the shell that DVC runs commands in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gan_pipeline.errors import PipelineError
from gan_pipeline.training import processes
from gan_pipeline.training.processes import lock_path, one_trainer

HOLDER = """
import sys
from pathlib import Path
from gan_pipeline.training.processes import one_trainer

with one_trainer(Path(sys.argv[1])):
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def _holder(checkpoint: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(checkpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "holding\n"
    return proc


def test_a_second_trainer_on_the_same_checkpoint_is_refused_naming_the_pid_that_holds_it(tmp_path):
    checkpoint = tmp_path / "m" / "checkpoint.safetensors"
    holder = _holder(checkpoint)
    try:
        with pytest.raises(PipelineError) as err, one_trainer(checkpoint):
            pytest.fail("the block ran")
        assert str(err.value) == (
            f"{checkpoint}: another trainer (PID {holder.pid}) is training from this checkpoint; wait for it "
            f"to end, or stop it (kill {holder.pid}), then run again"
        )
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / "m").exists()  # the holder removed its lock and the folder it made for it

    killed = _holder(checkpoint)
    killed.kill()  # SIGKILL: no clean-up, the file stays with its PID; the kernel drops the flock
    killed.wait(timeout=30)
    assert lock_path(checkpoint).read_text() == f"{killed.pid}\n"
    with one_trainer(checkpoint):
        assert lock_path(checkpoint).read_text() == f"{os.getpid()}\n"
    assert not lock_path(checkpoint).exists()


def test_the_dvc_process_is_the_nearest_ancestor_without_dvcs_stage_variable(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert processes.dvc_process() is None  # not started by dvc: nothing to watch
    monkeypatch.setenv("DVC_STAGE", "train@cgan")  # set here, after this process started
    assert processes.dvc_process() == os.getppid()


TRAINER = """
import sys, time
from pathlib import Path
from gan_pipeline import tracking
from gan_pipeline.config import TrackingConfig
from gan_pipeline.training import processes

root = Path(sys.argv[1])
watched = processes.end_with_dvc()  # as stages/train.py: first the watch, then the lock, then the run
with processes.one_trainer(root / "m" / "ck"):
    with tracking.run(TrackingConfig("unit", retries=2, retry_backoff_s=1), "cgan", {}, {}, root=root) as run:
        print(run.id, watched, flush=True)
        time.sleep(120)
"""

FAKE_DVC = """
import os, subprocess, sys
# As dvc runs a stage: through `sh -c`, with DVC_STAGE set; the second command keeps sh from exec-ing python,
# so that the trainer's parent is the shell, which stays when dvc is killed.
env = {**os.environ, "DVC_STAGE": "train@cgan"}
subprocess.run(["sh", "-c", f'"{sys.executable}" "{sys.argv[1]}" "{sys.argv[2]}"; true'], env=env)
"""


def test_a_trainer_started_through_a_shell_ends_when_dvc_is_killed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    trainer = tmp_path / "trainer.py"
    trainer.write_text(TRAINER)
    dvc = subprocess.Popen(
        [sys.executable, "-c", FAKE_DVC, str(trainer), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        run_id, watched = dvc.stdout.readline().split()
        assert int(watched) == dvc.pid
        assert lock_path(tmp_path / "m" / "ck").exists()
        dvc.send_signal(signal.SIGKILL)  # dvc alone; the shell and the trainer are left
        dvc.wait(timeout=30)
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        deadline = time.monotonic() + 60
        while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.get_run(run_id).info.status == "KILLED"
        assert dvc.stdout.read() == ""  # EOF: the trainer and its shell have ended
        assert not (tmp_path / "m").exists()  # the lock went with the trainer
    finally:
        dvc.kill()
