"""The GAN training loop: batched, seeded, one `on_step` callback for tracking, checkpointed and guarded."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_pipeline.config import ExperimentConfig
from gan_pipeline.data.loading import BatchSource
from gan_pipeline.models import GAN_MODELS, GanSpec
from gan_pipeline.runtime import progress, to_device
from gan_pipeline.training import resume as resume_policy
from gan_pipeline.training.checkpoint import Checkpoint, TrainState, save_checkpoint
from gan_pipeline.training.guards import (
    StopTraining,
    TrainingDiverged,
    check_losses_finite,
    check_weights_finite,
    watch_collapse,
)
from gan_pipeline.training.setup import TrainingSetup, build_training
from gan_pipeline.training.steps import StepBatch, ema_decay_at, ema_update, gan_step

__all__ = [
    "Checkpointing",
    "OnEpoch",
    "OnStep",
    "StopTraining",
    "TrainResult",
    "TrainingDiverged",
    "train_gan",
]

OnStep = Callable[[int, dict[str, float]], None]
# (epoch, step, generator) after each epoch, with the generator that samples (G's EMA when there is one) in
# train mode; may raise an error to fail training, or StopTraining to end it there as finished.
OnEpoch = Callable[[int, int, nn.Module], None]


@dataclass
class Checkpointing:
    """Where the loop checkpoints (every train.checkpoint_every steps and at the end), as what run."""

    path: Path
    identity: dict[str, Any]  # the params that made the run; a checkpoint with others is refused
    resume: Checkpoint | None = None  # the checkpoint to go on from
    extra: dict[str, Any] = field(default_factory=dict)  # saved with each checkpoint (e.g. the MLflow run)
    last_step: int | None = None  # the step of the last checkpoint written or resumed from
    # named state dicts saved with each checkpoint (e.g. the monitor's best generator), read at each write
    tensors: Callable[[], dict[str, dict[str, torch.Tensor]]] | None = None


@dataclass
class TrainResult:
    generator: nn.Module
    discriminator: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one row per logged step
    steps: int = 0  # D updates
    seconds: float = 0.0  # time inside the training loop, with the earlier processes' of a resumed run
    images_per_s: float = 0.0  # real images through D per second over the whole training
    ema: nn.Module | None = None  # the moving average of G's weights when train.ema_decay is set
    best: nn.Module | None = None  # the best-scored snapshot, when the caller keeps one (monitor.keep_best)
    kept: dict[str, Any] | None = None  # what the caller knows of `best` (e.g. the monitor's check row)
    stopped: bool = False  # an on_epoch hook ended training before its last step
    resumed_from: int = 0  # the step the run went on from (0: from scratch)
    precision: str = "fp32"  # what train.precision resolved to on this device, e.g. "bf16, channels_last"
    warnings: list[str] = field(default_factory=list)

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator to sample and evaluate with: the kept best one, else the EMA one, else G."""
        if self.best is not None:
            return self.best
        return self.ema if self.ema is not None else self.generator


def train_gan(
    exp: ExperimentConfig,
    batches: BatchSource,
    on_step: OnStep | None = None,
    on_epoch: OnEpoch | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrainResult:
    """Build the experiment's G and D and train them on `batches` (images in the model's value range).

    Every `train.log_every` steps (and at the last step) the window's mean stats go to `on_step(step, stats)`
    and into the result's history; after every epoch `on_epoch(epoch, step, generator)` runs. Deterministic
    on the CPU for a given `train.seed`; with `checkpointing`, a run resumed from any of its checkpoints ends
    bit-identical to an uninterrupted one. A non-finite loss or weight raises TrainingDiverged. In a process
    group (torchrun, see training/distributed.py) each rank trains on its slice of every global batch with
    DistributedDataParallel and synchronized BatchNorm, the stats are the ranks' means, and rank 0 alone
    writes checkpoints.
    """
    cfg = exp.train
    setup = build_training(exp)
    if batches.batch_size != cfg.batch_size:
        raise ValueError(f"batches of {batches.batch_size}, but train.batch_size is {cfg.batch_size}")
    state, epoch_rng = _start(setup, checkpointing, on_epoch)
    run = _Run(exp, setup, len(batches), checkpointing, state, epoch_rng, *setup.step_modules(cfg.compile))
    result = run.result()
    bar = run.progress_bar()
    try:  # closed also when a diverging step or the caller's on_epoch raises
        while state.epoch < cfg.epochs and not state.stopped:
            for real, real_labels in run.rest_of_epoch(batches):
                stats = run.step(real, real_labels)
                bar.update(1)
                row = run.record(stats)
                if row is not None:
                    bar.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}")
                    if on_step is not None:
                        on_step(state.step, row)
                run.end_batch()
            _end_of_epoch(on_epoch, state, setup)
    finally:
        bar.close()
    run.finish()
    result.stopped = state.stopped
    return _finished(result, state.step, run.seconds(), cfg.batch_size)


def _end_of_epoch(on_epoch: OnEpoch | None, state: TrainState, setup: TrainingSetup) -> None:
    """Run `on_epoch` with the generator that samples (the EMA with its own BatchNorm statistics, if any);
    a StopTraining from it marks the run stopped."""
    if on_epoch is None:
        return
    setup.refresh_ema()
    objects = setup.objects
    sampler = objects.ema if objects.ema is not None else objects.generator
    try:
        on_epoch(state.epoch, state.step, sampler)
    except StopTraining:
        state.stopped = True


def _start(
    setup: TrainingSetup, checkpointing: Checkpointing | None, on_epoch: OnEpoch | None
) -> tuple[TrainState, torch.Tensor]:
    """Where the run starts and its epoch's RNG state: afresh, or restored from the checkpoint to resume
    (then running the `on_epoch` that the checkpoint's epoch end has not run yet)."""
    resume = checkpointing.resume if checkpointing else None
    if resume is None:
        return TrainState(), setup.objects.rng.get_state()
    state, epoch_rng = resume.restore(setup.objects)
    checkpointing.last_step = state.step
    if state.batch == 0 and state.epoch > 0 and not state.stopped:
        # A checkpoint at an epoch's end is written before that epoch's on_epoch ran: run it now.
        _end_of_epoch(on_epoch, state, setup)
    return state, epoch_rng


@dataclass
class _Run:
    """One training run in progress: its objects, where it is, and where it checkpoints."""

    exp: ExperimentConfig
    setup: TrainingSetup
    batches_per_epoch: int
    checkpointing: Checkpointing | None
    state: TrainState
    epoch_rng: torch.Tensor  # the loop RNG's state when the current epoch began
    step_g: nn.Module  # G and D as the step calls them (DDP-wrapped, compiled)
    step_d: nn.Module
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)  # when this process began training
    seconds_before: float = field(init=False)  # the training time that the resumed checkpoint carries

    def __post_init__(self) -> None:
        self.seconds_before = self.state.seconds

    def seconds(self) -> float:
        """The training's time so far: the resumed checkpoint's and this process's."""
        return self.seconds_before + time.perf_counter() - self.started

    @property
    def spec(self) -> GanSpec:
        return GAN_MODELS[self.exp.model.name]

    @property
    def total(self) -> int:
        """The run's length in steps (D updates)."""
        return self.exp.train.epochs * self.batches_per_epoch

    def result(self) -> TrainResult:
        """The result as the run starts: its modules, the history so far, the resolved precision."""
        objects = self.setup.objects
        return TrainResult(
            objects.generator,
            objects.discriminator,
            history=self.state.history,
            ema=objects.ema,
            resumed_from=self.state.step,
            precision=self.setup.precision.describe(),
            warnings=self.warnings,
        )

    def progress_bar(self) -> Any:
        """The run's progress (`runtime.progress`), on the main process only."""
        name = f"train {self.spec.name}"
        return progress(self.total, name, "step", self.state.step, enabled=self.setup.replicas.is_main)

    def rest_of_epoch(self, batches: BatchSource) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch's batches not yet trained on."""
        return _epoch_from(batches, self.setup.objects.rng, self.epoch_rng, self.state.batch)

    def step(self, real: torch.Tensor, real_labels: torch.Tensor) -> dict[str, float]:
        """Train on one global batch; return the step's stats (the ranks' means), checked finite."""
        cfg, objects = self.exp.train, self.setup.objects
        batch = self._step_batch(real, real_labels)
        stats = gan_step(
            self.step_g,
            self.step_d,
            objects.opt_g,
            objects.opt_d,
            batch,
            self.setup.loss,
            cfg.grad_clip,
            self.setup.precision,
        )
        stats = self.setup.replicas.mean(stats)
        self.state.step += 1
        self.state.batch += 1
        check_losses_finite(self.state.step, stats, batch.update_g, self.checkpointing)
        if objects.ema is not None and batch.update_g:
            decay = ema_decay_at(self.state.step - 1, cfg.ema_decay, cfg.ema_warmup_steps)
            ema_update(objects.ema, objects.generator, decay)
        self.state.window.append(stats)
        return stats

    def _step_batch(self, real: torch.Tensor, real_labels: torch.Tensor) -> StepBatch:
        """This rank's slice of the batch, with G's latents (and labels) drawn from the loop's RNG."""
        cfg, rng, dev = self.exp.train, self.setup.objects.rng, self.setup.device
        replicas = self.setup.replicas
        z = to_device(torch.randn(cfg.batch_size, self.exp.model.latent_dim, generator=rng), dev)
        cond, fake_cond = (), ()
        if self.spec.conditional:
            cond = (real_labels,)
            fake_cond = (to_device(torch.randint(0, 10, (cfg.batch_size,), generator=rng), dev),)
        return StepBatch(
            replicas.shard(self.setup.precision.batch(real)),
            tuple(replicas.shard(c) for c in cond),
            tuple(replicas.shard(c) for c in fake_cond),
            replicas.shard(z),
            update_g=(self.state.step + 1) % cfg.d_steps == 0,
            rng=rng,
            step=self.state.step,
            augment=self.setup.augment,
        )

    def record(self, stats: dict[str, float]) -> dict[str, float] | None:
        """Watch for D winning totally; every log_every steps (and at the last) the window's mean row."""
        state = self.state
        if self.setup.loss.has_probabilities:
            watch_collapse(state, stats, self.exp.train.d_wins_steps, self.warnings)
        if state.step % self.exp.train.log_every != 0 and state.step != self.total:
            return None
        row = {"step": state.step, "epoch": state.epoch + 1, **_mean(state.window)}
        state.window.clear()
        state.history.append(row)
        return row

    def end_batch(self) -> None:
        """Move on to the next epoch after the last batch; checkpoint when one is due."""
        state = self.state
        if state.batch == self.batches_per_epoch:
            state.epoch, state.batch = state.epoch + 1, 0
            # the next epoch's permutation is drawn from here
            self.epoch_rng = self.setup.objects.rng.get_state()
        if self.checkpointing is not None and (
            state.step % self.exp.train.checkpoint_every == 0 or state.step == self.total
        ):
            self.checkpoint()

    def checkpoint(self) -> None:
        """Check G and D finite and, on the main process, write the checkpoint."""
        objects, checkpointing = self.setup.objects, self.checkpointing
        check_weights_finite(self.state.step, checkpointing, objects.generator, objects.discriminator)
        self.state.seconds = self.seconds()
        if self.setup.replicas.is_main:
            save_checkpoint(
                checkpointing.path,
                objects,
                identity=checkpointing.identity,
                total_steps=self.total,
                state=self.state,
                epoch_rng=self.epoch_rng,
                training_code=resume_policy.training_code(),
                extra=checkpointing.extra,
                extra_tensors=checkpointing.tensors() if checkpointing.tensors else None,
            )
        checkpointing.last_step = self.state.step

    def finish(self) -> None:
        """The last checkpoint and weight check; BatchNorm back to the plain kind for saving and sampling."""
        objects = self.setup.objects
        checkpointing = self.checkpointing
        if checkpointing is not None and (checkpointing.last_step != self.state.step or self.state.stopped):
            # a finished checkpoint, also when train.epochs only grew by nothing or a hook stopped the run
            self.checkpoint()
        check_weights_finite(self.state.step, self.checkpointing, objects.generator, objects.discriminator)
        self.setup.replicas.plain_batchnorm(objects.generator, objects.discriminator, objects.ema)
        # the last checkpoint may have been written before the last epoch's end measured the EMA's statistics
        self.setup.refresh_ema()


def _finished(result: TrainResult, steps: int, seconds: float, batch_size: int) -> TrainResult:
    """The result with the run's step count, its time and speed over the whole training (with what a resumed
    checkpoint had trained), its modules in eval mode."""
    result.steps = steps
    result.seconds = seconds
    result.images_per_s = steps * batch_size / max(seconds, 1e-9)
    for module in (result.generator, result.discriminator, result.ema, result.best):
        if module is not None:
            module.eval()
    return result


def _epoch_from(batches: BatchSource, rng: torch.Generator, epoch_rng: torch.Tensor, done: int):
    """The rest of an epoch whose permutation is drawn from RNG state `epoch_rng`, after `done` batches.

    The permutation is replayed from the epoch's start state and `rng` is then put back where it was, so a
    run resumed mid-epoch sees the same batches and random numbers as one that never stopped.
    """
    if done == 0:
        return batches.epoch(rng)
    current = rng.get_state()
    rng.set_state(epoch_rng)
    iterator = iter(batches.epoch(rng))
    for _ in range(done):
        next(iterator)
    rng.set_state(current)
    return iterator


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each stat over the rows, ignoring NaN (steps that did not update G)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out
