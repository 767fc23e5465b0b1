"""How a stage script's process ends.

A stage process that has imported torch and MLflow spends 1 to 3 s after its last line tearing the
interpreter down (freeing every module object), a few seconds per `dvc repro` stage for nothing: the
operating system frees the memory at once. `run_stage` ends a successful stage without that teardown, after
doing what a normal exit does that matters: waiting for running non-daemon threads, the `atexit` handlers
(MLflow's, h5py's, logging's flush, temporary folders' removal) and flushing stdout and stderr.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's `main()` as the whole process. A failure (SystemExit, an exception) exits as usual."""
    main()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; without it, exit as usual
    if run_exit_handlers is None:
        return
    run_exit_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
