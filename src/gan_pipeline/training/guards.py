"""The training loop's divergence guards: a non-finite loss or weight stops training by name, keeping the
last good checkpoint; D winning totally for too many steps in a row is a warning."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from gan_pipeline.errors import PipelineError
from gan_pipeline.training.checkpoint import TrainState

if TYPE_CHECKING:
    from gan_pipeline.training.loop import Checkpointing

log = logging.getLogger(__name__)

# D "wins totally" when its mean probability on reals is above this and on fakes below 1 - this.
COLLAPSE_PROBABILITY = 0.99


class TrainingDiverged(PipelineError):
    """A loss or a weight became NaN or infinite; the last good checkpoint is kept."""


class StopTraining(Exception):  # noqa: N818 -- a signal to the loop, not an error
    """Raised by an `on_epoch` hook to end training there as finished (e.g. the divergence alarm with
    monitor.on_diverge stop): the loop writes its last checkpoint, marked stopped, and returns."""


def last_good_checkpoint(checkpointing: Checkpointing | None) -> str:
    """What is left to go on from, for the divergence message."""
    if checkpointing is None or checkpointing.last_step is None:
        return "no checkpoint was written"
    return f"last good checkpoint: {checkpointing.path} (step {checkpointing.last_step}), kept"


def check_losses_finite(
    step: int, stats: dict[str, float], update_g: bool, checkpointing: Checkpointing | None
) -> None:
    """Raise TrainingDiverged when loss_d (or, on a step that updated G, loss_g) is not finite."""
    for key in ("loss_d", "loss_g") if update_g else ("loss_d",):
        if not math.isfinite(stats[key]):
            where = last_good_checkpoint(checkpointing)
            raise TrainingDiverged(f"training diverged at step {step}: {key} is {stats[key]}; {where}")


def check_weights_finite(step: int, checkpointing: Checkpointing | None, *modules: nn.Module) -> None:
    """Raise TrainingDiverged naming the first non-finite floating-point entry of G's or D's state."""
    for module, name in zip(modules, ("generator", "discriminator"), strict=False):
        for key, value in module.state_dict().items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise TrainingDiverged(
                    f"training diverged at step {step}: {name} weight {key} is not finite; "
                    f"{last_good_checkpoint(checkpointing)}"
                )


def watch_collapse(state: TrainState, stats: dict[str, float], steps: int, warnings: list[str]) -> None:
    """Count the steps in a row that D wins totally; warn once when the streak reaches `steps`."""
    if stats["d_real"] > COLLAPSE_PROBABILITY and stats["d_fake"] < 1 - COLLAPSE_PROBABILITY:
        state.collapse_streak += 1
    else:
        state.collapse_streak = 0
    if state.collapse_streak == steps:
        message = (
            f"step {state.step}: D has won totally for {steps} steps "
            f"(D(x) {stats['d_real']:.4f}, D(G(z)) {stats['d_fake']:.4f}): G may have collapsed"
        )
        log.warning(message)
        warnings.append(message)
