"""One experiment's training as the train stage runs it, with no MLflow in it: the plan (params checked
against the data, the batches, the checkpoint to resume), the run (G and D with the mode-collapse alarm and
checkpoints) and its outputs (weights, the loss and coverage logs for `dvc plots`, the loss plot).

The stage opens the MLflow run between `plan_training` and `train_experiment`: the run to reopen is the one
the resumed checkpoint names, and each checkpoint then names the run it logs into.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan_pipeline.config import Params, check_fits_data, experiment, flatten
from gan_pipeline.config.schema import ExperimentConfig
from gan_pipeline.data.loading import BatchSource, load_split, to_float
from gan_pipeline.data.streaming import train_batches, train_size
from gan_pipeline.errors import ParamsError
from gan_pipeline.io import load_module, read_json, save_weights, write_csv
from gan_pipeline.metrics.fid import fid_from_features
from gan_pipeline.metrics.inception import InceptionFeatures, inception_features, resolve_precision
from gan_pipeline.metrics.reference import load_train_features
from gan_pipeline.metrics.suite import seeded_pick
from gan_pipeline.models import GAN_MODELS, GanSpec
from gan_pipeline.models.classifier import DigitClassifier
from gan_pipeline.runtime import device
from gan_pipeline.sampling import save_grid
from gan_pipeline.training.checkpoint import Checkpoint
from gan_pipeline.training.loop import Checkpointing, OnStep, TrainResult, train_gan
from gan_pipeline.training.monitor import MONITOR_COLUMNS, TrainingMonitor
from gan_pipeline.training.resume import resume_point


@dataclass(frozen=True)
class ExperimentPaths:
    """What the train stage reads and writes for one experiment (the paths dvc.yaml names)."""

    data: Path  # the prepared HDF5 file
    stats: Path  # its stats JSON (the content hash)
    out: Path  # folder of generator/discriminator weights, run.json and training.png
    log: Path  # the loss log CSV
    checkpoint: Path  # the training checkpoint, resumed from and written
    classifier: Path | None = None  # digit classifier weights, for the in-training checks (monitor)
    eval_log: Path | None = None  # the checks' log CSV (coverage, fid_classifier, alarms)
    steps: Path | None = None  # folder of each check's 10x10 sample grid, step_<step>.png
    # the reference stage's features file, whose training-digit features monitor.score fid_inception uses
    inception_reference: Path | None = None

    @property
    def generator(self) -> Path:
        return self.out / "generator.safetensors"

    @property
    def plot(self) -> Path:
        return self.out / "training.png"


@dataclass(frozen=True)
class InceptionCheck:
    """What the in-training checks need to score by fid_inception: the reference stage's training-digit
    features (float64 (N, 2048)) and the network, batch size and precision that computed them."""

    real: torch.Tensor
    weights: str | None  # evaluate.inception_weights (null: the bundled weights)
    batch_size: int
    precision: str  # fp32 | bf16, as the reference file records

    def digest(self) -> str:
        """The features' sha256 (float64 bytes): a checkpoint scored against other ones is not resumed."""
        return hashlib.sha256(self.real.numpy().tobytes()).hexdigest()


@dataclass
class TrainingPlan:
    """An experiment ready to train: its params, batches, identity and the checkpoint to go on from."""

    name: str
    exp: ExperimentConfig
    run_params: dict[str, Any]  # the experiment's and its data's params as flat keys (for MLflow)
    monitor_cfg: tuple[float, float]  # evaluate.coverage_confidence and coverage_min_fraction
    batches: BatchSource
    identity: dict[str, Any]  # what a checkpoint must have been made with to be resumed
    content_hash: str  # the prepared data's
    resume: Checkpoint | None
    note: str  # what resume_point decided, for the log
    inception: InceptionCheck | None = None  # with monitor.score fid_inception

    @property
    def spec(self) -> GanSpec:
        return GAN_MODELS[self.exp.model.name]

    @property
    def earlier_run_id(self) -> str | None:
        """The MLflow run of the checkpoint being resumed, if it names one."""
        return self.resume.extra.get("mlflow_run_id") if self.resume else None


def plan_training(
    params: Params, source: str, name: str, paths: ExperimentPaths, world_size: int = 1
) -> TrainingPlan:
    """Check experiment `name` against its data and the process count, and find where it starts.

    ParamsError (prefixed with `source`, the params file) when the alarm lacks its classifier or the batch
    does not fit the data or the processes; DataError when the data or a checkpoint is unreadable."""
    exp, key = experiment(params, name), f"experiments.{name}"
    if exp.monitor.eval_every is not None and (paths.classifier is None or paths.eval_log is None):
        raise ParamsError(
            f"{source}: {key}.monitor.eval_every: the mode-collapse alarm needs "
            "--classifier and --eval-log, got none (set it to null to turn the alarm off)"
        )
    check_fits_data(key, exp, train_size(paths.data), world_size, source)
    # MNIST-sized data lives on the device as one tensor; faces stream from the HDF5 file.
    batches = train_batches(
        paths.data, GAN_MODELS[exp.model.name].value_range, exp.train.batch_size, device()
    )
    content_hash = read_json(paths.stats)["content_hash"]
    identity = {f"{key}.{k}": v for k, v in flatten(exp).items()}
    identity["data content hash"] = content_hash
    # The thread count decides the bits too: a run resumed at another count matches neither run's bits.
    identity["runtime.threads"] = params.runtime.threads
    inception = _inception_check(params, source, key, exp, paths)
    if inception is not None:  # the score that picks the kept generator depends on them
        identity["inception reference sha256"] = inception.digest()
        identity["evaluate.inception_weights"] = inception.weights
    resume, note = resume_point(paths.checkpoint, identity, exp.train.epochs * len(batches))
    return TrainingPlan(
        name=name,
        exp=exp,
        run_params={**flatten(exp), **flatten(params.datasets[exp.data], "data.")},
        monitor_cfg=(params.evaluate.coverage_confidence, params.evaluate.coverage_min_fraction),
        batches=batches,
        identity=identity,
        content_hash=content_hash,
        resume=resume,
        note=note,
        inception=inception,
    )


def _inception_check(
    params: Params, source: str, key: str, exp: ExperimentConfig, paths: ExperimentPaths
) -> InceptionCheck | None:
    """The reference's training-digit features when the checks rank by fid_inception (ParamsError
    without --inception-reference, DataError when the file is unreadable or of another precision)."""
    if exp.monitor.eval_every is None or exp.monitor.score != "fid_inception":
        return None
    if paths.inception_reference is None:
        raise ParamsError(
            f"{source}: {key}.monitor.score: fid_inception needs --inception-reference (the reference "
            "stage's features file), got none"
        )
    cfg = params.evaluate
    precision = resolve_precision(cfg.inception_precision, device())
    real = load_train_features(paths.inception_reference, precision)
    return InceptionCheck(real, cfg.inception_weights, cfg.inception_batch_size, precision)


def train_experiment(
    plan: TrainingPlan,
    paths: ExperimentPaths,
    on_step: OnStep | None = None,
    extra: dict[str, Any] | None = None,
    write_outputs: bool = True,
    on_check: OnStep | None = None,
    on_samples: Callable[[int, np.ndarray], None] | None = None,
) -> TrainResult:
    """Train the planned experiment, checkpointing with `extra` (e.g. the MLflow run id) in each checkpoint,
    and, with `write_outputs` (the main process), write its weights, logs and loss plot. The loop's stats go
    to `on_step(step, stats)`, each in-training check's `monitor_*` scores to `on_check(step, scores)`
    (default: on_step) and its first monitor.SHOWN samples (uint8, the same latents at every check) to
    `on_samples(step, images)` (and, with `paths.steps`, as a grid to `<paths.steps>/step_<step>.png` once
    training has finished).

    The generator written (the one sample and evaluate use) is the best check's with monitor.keep_best,
    else G's EMA with train.ema_decay, else G at the last step.
    """
    checkpointing = Checkpointing(paths.checkpoint, plan.identity, plan.resume, dict(extra or {}))
    if write_outputs and paths.steps is not None:
        on_samples = _step_grids(paths.steps, plan.resume.state.step if plan.resume else 0, on_samples)
    monitor = _monitor(plan, paths, on_check or on_step, on_samples)
    if monitor is not None:
        checkpointing.extra["monitor_rows"] = monitor.rows  # each checkpoint carries the checks so far
        checkpointing.tensors = monitor.checkpoint_tensors  # and the kept generator's weights
    result = train_gan(plan.exp, plan.batches, on_step, monitor, checkpointing=checkpointing)
    if monitor is not None and monitor.best_state is not None:
        result.best = copy.deepcopy(result.ema if result.ema is not None else result.generator)
        result.best.load_state_dict(monitor.best_state)
        result.best.eval()
        result.kept = monitor.best
    if write_outputs:
        _write_outputs(plan, paths, result, monitor)
        if paths.steps is not None:
            _publish_grids(paths.steps)
    return result


def run_record(plan: TrainingPlan, run_id: str, tracking_uri: str, model_uri: str | None, generator_md5: str,
               result: TrainResult) -> dict[str, Any]:  # fmt: skip
    """run.json: the MLflow run that sample and evaluate log into, and what the training did: `best`, the
    check whose generator was kept (its monitor row; null: the last step's generator) and its
    `best_metrics` (which evaluate adds to the DVC metrics), `stopped_early` (the divergence alarm ended
    training)."""
    return {
        "experiment": plan.name,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "model_uri": model_uri,
        "generator_md5": generator_md5,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "train_images_per_s": round(result.images_per_s, 1),
        "precision": result.precision,
        "best": result.kept,
        "best_metrics": kept_metrics(result.kept, plan.exp.monitor.score) if result.kept else None,
        "stopped_early": result.stopped,
    }


def kept_metrics(kept: dict[str, Any], score: str) -> dict[str, float]:
    """The kept check as metrics: best_step and best_monitor_<score> (the score it was chosen by)."""
    return {"best_step": kept["step"], f"best_monitor_{score}": kept[score]}


def _write_outputs(
    plan: TrainingPlan, paths: ExperimentPaths, result: TrainResult, monitor: TrainingMonitor | None
) -> None:
    from gan_pipeline.plots import plot_training  # matplotlib, only once there is something to draw

    config = {"model": flatten(plan.exp.model)}
    save_weights(paths.generator, result.sampling_generator, config)
    save_weights(paths.out / "discriminator.safetensors", result.discriminator, config)
    write_csv(paths.log, result.history)
    if paths.eval_log is not None:
        write_csv(
            paths.eval_log, monitor.rows if monitor else [], monitor.columns if monitor else MONITOR_COLUMNS
        )
    plot_training(result.history, plan.name, paths.plot)


def step_grid_name(step: int) -> str:
    """The file of the in-training check's sample grid at `step` (zero-padded: names sort as steps do)."""
    return f"step_{step:07d}.png"


def _staged_grids(folder: Path) -> Path:
    """Where a run writes its check grids until it finishes: `<folder>.partial` (ignored by git)."""
    return folder.with_name(folder.name + ".partial")


def _grid_steps(folder: Path) -> dict[int, Path]:
    grids = folder.glob("step_*.png") if folder.is_dir() else ()
    return {int(g.stem[5:]): g for g in grids if g.stem[5:].isdigit()}


def _step_grids(folder: Path, start: int, show: Callable[[int, np.ndarray], None] | None):
    """`show` that also writes each check's 10x10 grid, first into `<folder>.partial`: `folder` keeps the
    last finished run's grids until `_publish_grids` moves this run's in, so a run that fails leaves them
    as they were. Training from `start` (0: from scratch), the staged grids of later steps are dropped
    (a killed run went past its checkpoint); those up to `start` come from the staging folder of the run
    being resumed, else from `folder` (a finished run re-run with nothing left to train)."""
    staged = _staged_grids(folder)
    staged.mkdir(parents=True, exist_ok=True)
    kept = _grid_steps(staged)
    for step, grid in kept.items():
        if step > start:
            grid.unlink()
    for step, grid in _grid_steps(folder).items():
        if step <= start and step not in kept:
            shutil.copyfile(grid, staged / grid.name)

    def write_and_show(step: int, images: np.ndarray) -> None:
        save_grid(images, 10, staged / step_grid_name(step))
        if show is not None:
            show(step, images)

    return write_and_show


def _publish_grids(folder: Path) -> None:
    """Moves a finished run's staged grids into `folder` (file by file, each move atomic) and removes
    the grids of steps it did not reach; a crash in between leaves the staging folder to finish from."""
    staged = _staged_grids(folder)
    if not staged.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    new = _grid_steps(staged)
    for grid in new.values():
        os.replace(grid, folder / grid.name)
    for step, grid in _grid_steps(folder).items():
        if step not in new:
            grid.unlink()
    shutil.rmtree(staged)


def _monitor(plan: TrainingPlan, paths: ExperimentPaths, log: OnStep | None,
             show: Callable[[int, np.ndarray], None] | None = None) -> TrainingMonitor | None:  # fmt: skip
    """The in-training checks when monitor.eval_every is set (every rank runs them, so all stop together),
    going on from the checks and the kept generator that the resumed checkpoint carries. fid_classifier
    compares the samples with `monitor.n_samples` training digits picked with `monitor.seed`."""
    exp = plan.exp
    if exp.monitor.eval_every is None:
        return None
    classifier, _ = load_module(paths.classifier, lambda c: DigitClassifier(c["feature_dim"]))
    train_images, train_labels = load_split(paths.data, "train")
    pick = seeded_pick(len(train_images), min(exp.monitor.n_samples, len(train_images)), exp.monitor.seed)
    resume = plan.resume
    return TrainingMonitor(
        exp.monitor,
        classifier.to(device()),
        plan.spec,
        exp.model.latent_dim,
        *plan.monitor_cfg,
        log,
        rows=resume.extra.get("monitor_rows") if resume else None,
        digits=sorted(set(train_labels.tolist())),
        real=to_float(train_images[pick.numpy()], (-1.0, 1.0)),
        best_state=(resume.saved("best") or None) if resume else None,
        show=show,
        fid_inception=_fid_inception(plan.inception) if plan.inception is not None else None,
    )


def _fid_inception(check: InceptionCheck) -> Callable[[np.ndarray], float]:
    """The checks' fid_inception: uint8 samples (n, H, W) through the standard Inception network (loaded
    once), in the reference's precision, against its training-digit features."""
    model = InceptionFeatures(check.weights).to(device())

    def score(images: np.ndarray) -> float:
        fake = inception_features(model, images, check.batch_size, check.precision, "monitor: inception")
        return fid_from_features(check.real, fake)

    return score
