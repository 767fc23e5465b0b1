"""A stage process that skips the interpreter's teardown still does what a normal exit does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from gan_pipeline.cli import run_stage

out = Path(sys.argv[1])

def main():
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    def late():
        time.sleep(0.3)
        (out / "thread").write_text("done")
    threading.Thread(target=late).start()
    print("unflushed line", end="")
    sys.stdout.write(" and more")
    if len(sys.argv) > 2:
        sys.exit(int(sys.argv[2]))

run_stage(main)
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path), *args], capture_output=True, text=True, timeout=60
    )


def test_a_successful_stage_flushes_output_waits_for_threads_and_runs_exit_handlers(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "unflushed line and more"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_failing_stage_keeps_its_exit_status(tmp_path):
    proc = _run(tmp_path, "3")
    assert proc.returncode == 3
    assert (tmp_path / "atexit").read_text() == "ran"
