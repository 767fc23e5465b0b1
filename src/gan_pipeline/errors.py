"""The exceptions that stage scripts turn into a one-line message and a non-zero exit, and `first_line` for
writing such messages."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class PipelineError(Exception):
    """A user-facing error: the message names the file or key and what was expected."""


class ParamsError(PipelineError):
    """A value in params.yaml is missing, unknown or of the wrong type or range."""


class DataError(PipelineError):
    """A raw or prepared data file is missing, unreadable or of the wrong shape, dtype or range."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (libraries append tracebacks and hints), or its type's name
    when the text is empty, for one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def under_dvc_hint(exc: PipelineError) -> str:
    """What a failed stage run by `dvc repro` leaves, for a failure the check stage could not see first: its
    outputs are persisted (DVC does not remove them before the run), so they are the previous run's, and
    `dvc checkout <stage>` restores any that this run replaced. Empty outside DVC and for params errors."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or isinstance(exc, ParamsError):
        return ""
    return f" [{stage}: the previous outputs stay; `dvc checkout {stage}` restores any this run replaced]"


def exit_on_error(main: F) -> F:
    """Run a stage's main(); a PipelineError becomes `error: <message>` on stderr and exit status 1 (under
    `dvc repro`, with the way back to the previous outputs)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as exc:
            print(f"error: {exc}{under_dvc_hint(exc)}", file=sys.stderr)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
