"""Whether a run goes on from its checkpoint: the same params (less the resumable ones) and, for a finished
run, the same training code; anything else starts afresh or is refused by name."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from gan_pipeline.codedeps import import_closure
from gan_pipeline.errors import ParamsError
from gan_pipeline.training.checkpoint import Checkpoint, load_checkpoint

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds gan_pipeline/
# The training code is what the train stage runs to train: the import closure of training.experiment
# (plan, loop, models, data batching, the mode-collapse alarm, params parsing), less plots.py, which only
# draws the loss plot that every run, one that goes on from a finished checkpoint too, draws anew. Left in,
# a module that changes no weight costs a needless retrain on an edit, never a stale result.
TRAINING_ENTRY = "gan_pipeline/training/experiment.py"
NOT_TRAINING = ("gan_pipeline/plots.py",)


def training_files() -> list[str]:
    """The package files, relative to SOURCE_ROOT and sorted, whose code decides the trained weights."""
    closure = import_closure(SOURCE_ROOT / TRAINING_ENTRY, SOURCE_ROOT, source=".")
    return [path for path in closure if path not in NOT_TRAINING]


@functools.cache
def training_code() -> str:
    """An MD5 over the paths and source of `training_files()`: a finished checkpoint made by other code is
    retrained."""
    digest = hashlib.md5()
    for path in training_files():
        digest.update(path.encode() + b"\0" + (SOURCE_ROOT / path).read_bytes())
    return digest.hexdigest()


# Params that may differ between a checkpoint and the run that goes on from it: they change neither
# shapes nor the updates already made (a larger `epochs` extends a finished run). `collapse_steps` is the
# former name of `d_wins_steps`, so that checkpoints written under it still resume.
RESUMABLE = (
    "train.epochs",
    "train.log_every",
    "train.checkpoint_every",
    "train.d_wins_steps",
    "train.collapse_steps",
)


# Params added after checkpoints were first written, with the value that trains as the code did before
# them: a checkpoint made without the key goes on when the params hold that value (ANY: whatever they hold,
# as for r1_every, which does nothing while r1_gamma is 0, and the in-training checks' keys, which change no
# weight; a resumed run ranks the checks from then on).
ANY = object()
_NOT_ADDED = object()
ADDED_KEYS: dict[str, Any] = {
    "model.spectral_norm": False,
    "train.lr_d": None,
    "train.ema_warmup_steps": 0,
    "train.diffaugment": None,
    "train.r1_gamma": 0.0,
    "train.r1_every": ANY,
    "monitor.score": ANY,
    "monitor.keep_best": ANY,
    "monitor.diverge_margin": ANY,
    "monitor.diverge_checks": ANY,
    "monitor.on_diverge": ANY,
}


def _added_as_before(key: str, checkpoint: Checkpoint, value: Any) -> bool:
    """Whether `key` is one the checkpoint predates, and `value` trains as the code did before it."""
    if key in checkpoint.identity:
        return False
    before = next((v for k, v in ADDED_KEYS.items() if key == k or key.endswith(f".{k}")), _NOT_ADDED)
    return before is ANY or (before is not _NOT_ADDED and before == value)


def differences(checkpoint: Checkpoint, identity: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, current value) for each identity key that differs, resumable ones and
    those the checkpoint predates (ADDED_KEYS, at their former behaviour) aside."""
    # Model (shape) params first: they are the likeliest reason and the one to name.
    keys = sorted(set(checkpoint.identity) | set(identity), key=lambda k: (".model." not in f".{k}", k))
    return [
        (key, checkpoint.identity.get(key), identity.get(key))
        for key in keys
        if not key.endswith(RESUMABLE)
        and checkpoint.identity.get(key) != identity.get(key)
        and not _added_as_before(key, checkpoint, identity.get(key))
    ]


def resume_point(
    path: str | Path, identity: dict[str, Any], total_steps: int
) -> tuple[Checkpoint | None, str]:
    """The checkpoint to go on from (None: start afresh) and a line saying what was decided.

    A finished run with other params is replaced (its results are the stage's outputs already); an
    unfinished one with other params is refused, naming the first param that differs, since going on
    would mix two configurations and starting afresh would throw its work away. Likewise a finished run
    made by other training code (`training_code`: DVC re-runs the stage after a code change, and the old
    weights would come back unchanged) is retrained; an unfinished one goes on, with a note (the usual
    crash, fix, resume).
    """
    path = Path(path)
    if not path.exists():
        return None, f"no checkpoint at {path}: training from scratch"
    checkpoint = load_checkpoint(path)
    diff = differences(checkpoint, identity)
    if diff:
        key, old, new = diff[0]
        if checkpoint.finished:
            return None, f"{path}: a finished run with {key} {old!r} (now {new!r}): training from scratch"
        raise ParamsError(
            f"{path}: an unfinished run (step {checkpoint.state.step} of {checkpoint.total_steps}) was made "
            f"with {key} {old!r}, the params say {new!r}; restore that value to resume it, or delete the "
            f"checkpoint to start over"
        )
    same_code = checkpoint.meta.get("training_code") == training_code()
    if checkpoint.finished and not same_code:
        return None, f"{path}: a finished run made by other training code: training from scratch"
    if checkpoint.state.step > total_steps:
        epochs_key = next((k for k in identity if k.endswith("train.epochs")), "train.epochs")
        raise ParamsError(
            f"{path}: the checkpoint is at step {checkpoint.state.step}, past the {total_steps} steps of "
            f"{epochs_key} {identity.get(epochs_key)!r}; raise it, or delete the checkpoint to start over"
        )
    changed = "" if same_code else " (the training code has changed since it was written)"
    return checkpoint, f"resuming from {path} at step {checkpoint.state.step} of {total_steps}{changed}"
