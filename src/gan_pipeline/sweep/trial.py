"""One trial of a sweep, as a Ray Tune function trainable: the experiment with the trial's overrides trained,
sampled and scored in-process as the train, sample and evaluate stages do, in an MLflow run of its own that
looks like a stage run (params, per-step losses, each check's scores and sample grid, the generator model,
the evaluate scores), nested under the sweep's run.

Each in-training check (monitor.eval_every) is a report to Tune, with the monitor's score as `score`, so
that the scheduler (ASHA) can end a trial that is losing; the report carries the trial's training
checkpoint (the train stage's checkpoint file), so that a trial whose process or node died starts again
from its last report, in the same MLflow run, and ends bit-identical to an uninterrupted one. The last
check of a trial that runs to its end goes into the final report, with the evaluate scores.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan_pipeline.errors import DataError
from gan_pipeline.sweep.space import trial_overrides, with_overrides

CHECKPOINT_FILE = "checkpoint.safetensors"
REPORTED_FILE = "reported.json"  # in a Tune checkpoint: the step of the check it was reported with
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's tag of a nested run (the UI shows it under its parent)
# A test's hook for a real kill: the trial with this index exits hard after its first report, once.
CRASH_ENV = "GAN_PIPELINE_SWEEP_CRASH_TRIAL"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares: the params file as read, the experiment, the inputs (paths that
    each node reaches, or pulls with `pull`), the MLflow store and the sweep's run."""

    experiment: str
    raw_params: dict[str, Any]
    params_source: str
    root: Path  # the DVC repository (the MLflow store's anchor, `dvc pull`'s working directory)
    data: Path
    stats: Path
    classifier: Path
    classifier_metrics: Path
    inception_reference: Path
    out: Path  # each trial's outputs go to out/<trial id>/ on the node that runs it
    tracking_uri: str
    parent_run_id: str
    sweep_name: str
    pull: bool = False


class StoppedByScheduler(Exception):
    """Tune ended the trial at a report (its scheduler stopped it): raised through the training loop."""

    def __init__(self, step: int):
        super().__init__(f"stopped by the scheduler at step {step}")
        self.step = step


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The trainable: `config` maps the space's dotted keys (under the experiment) to this trial's values."""
    from ray import tune

    from gan_pipeline.runtime import use_threads
    from gan_pipeline.training.experiment import ExperimentPaths, plan_training

    context = tune.get_context()
    trial_id = context.get_trial_id()
    source = f"{setup.params_source} (trial {trial_id})"
    params = with_overrides(setup.raw_params, setup.experiment, trial_overrides(config), source)
    use_threads(params.runtime.threads)
    os.environ["MLFLOW_TRACKING_URI"] = setup.tracking_uri  # this process's store: the sweep's
    if setup.pull:
        pull_inputs(setup)
    out = setup.out / trial_id
    with tempfile.TemporaryDirectory(prefix="sweep_checkpoint_") as scratch:
        # The checkpoint comes from Tune's copy alone, so that a trial resumes on any node.
        checkpoint = Path(scratch) / CHECKPOINT_FILE
        paths = ExperimentPaths(setup.data, setup.stats, out / "model", out / "train_log.csv", checkpoint,
                                setup.classifier, out / "eval_log.csv",
                                inception_reference=setup.inception_reference)  # fmt: skip
        reported = _restore(tune.get_checkpoint(), paths.checkpoint)
        plan = plan_training(params, source, setup.experiment, paths)
        crash = os.environ.get(CRASH_ENV) is not None and trial_id.endswith(
            f"_{int(os.environ[CRASH_ENV]):05d}"
        )
        reporter = _Reporter(plan, paths.checkpoint, reported, crash_after_first=crash and reported is None)
        final = _train_in_run(setup, params, plan, paths, out, reporter, trial_id)
    if final is None:
        raise SystemExit(0)  # what Tune's report asked for when it stopped the trial
    tune.report(final)


def _restore(checkpoint: Any, path: Path) -> int | None:
    """Copy a Tune checkpoint's training checkpoint to `path`: the step it was reported at (None: none)."""
    if checkpoint is None:
        return None
    from gan_pipeline.io import read_json

    with checkpoint.as_directory() as folder:
        if (Path(folder) / CHECKPOINT_FILE).exists():
            shutil.copy2(Path(folder) / CHECKPOINT_FILE, path)
        return int(read_json(Path(folder) / REPORTED_FILE)["step"])


class _Reporter:
    """The training's `on_check`: each check a Tune report with the checkpoint, but for the checks that the
    resumed checkpoint had reported already and the last one (the final report's)."""

    def __init__(self, plan: Any, checkpoint: Path, reported: int | None, crash_after_first: bool):
        self.score_key = f"monitor_{plan.exp.monitor.score}"
        self.checkpoint = checkpoint
        self.reported = reported or 0
        self.final_step = plan.exp.train.epochs * len(plan.batches)
        self.crash_after_first = crash_after_first
        self.run_id = ""
        self.last_score: float | None = None

    def __call__(self, step: int, scores: dict[str, float]) -> None:
        from ray import tune

        from gan_pipeline.io import write_json

        self.last_score = scores.get(self.score_key, self.last_score)
        if step <= self.reported or step >= self.final_step:
            return
        metrics = {"score": self.last_score, "step": step, **scores, "mlflow_run_id": self.run_id}
        with tempfile.TemporaryDirectory(prefix="sweep_report_") as folder:
            if self.checkpoint.exists():  # the last one the loop wrote (train.checkpoint_every), at or before
                shutil.copy2(self.checkpoint, Path(folder) / CHECKPOINT_FILE)
            write_json(Path(folder) / REPORTED_FILE, {"step": step})
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            except SystemExit:  # Tune's report ends a trial that its scheduler stopped
                raise StoppedByScheduler(step) from None
        self.reported = step
        if self.crash_after_first:
            os._exit(1)  # a real kill (a preempted node): no cleanup, the MLflow run left RUNNING


def _train_in_run(setup: TrialSetup, params: Any, plan: Any, paths: Any, out: Path, reporter: _Reporter,
                  trial_id: str) -> dict[str, Any] | None:  # fmt: skip
    """Train, sample and score the trial in its MLflow run (reopened when resuming): the final report's
    metrics, or None when the scheduler stopped the trial."""
    from gan_pipeline import tracking
    from gan_pipeline.data.loading import prepared_dataset
    from gan_pipeline.provenance import environment, run_tags
    from gan_pipeline.sampling import grid_image
    from gan_pipeline.training.experiment import train_experiment

    tags = {
        **run_tags(
            setup.root, [_shown_path(setup.data, setup.root)], plan.content_hash, "gan_pipeline.sweep"
        ),
        **tracking.info_tags({"environment": environment()}),
        "experiment": plan.name,
        PARENT_RUN_TAG: setup.parent_run_id,
        "sweep": setup.sweep_name,
        "sweep.trial_id": trial_id,
    }
    name = f"{setup.sweep_name}-{trial_id.rsplit('_', 1)[-1]}"
    with tracking.run(params.tracking, name, plan.run_params, tags, plan.earlier_run_id, setup.root,
                      journal=out / tracking.JOURNAL_NAME) as run:  # fmt: skip
        reporter.run_id = run.id
        run.log_dataset(prepared_dataset(setup.data, "train"), "training")

        def on_check(step: int, scores: dict[str, float]) -> None:
            run.log_snapshot(f"{plan.name}-step{step}", step, scores)
            reporter(step, scores)

        on_samples = lambda step, images: run.log_image("samples", grid_image(images, 10), step)  # noqa: E731
        extra = {"mlflow_run_id": run.id}
        try:
            result = train_experiment(
                plan, paths, run.log_step, extra, on_check=on_check, on_samples=on_samples
            )
        except StoppedByScheduler as stop:
            run.set_tags({"sweep.stopped_early": "true", "sweep.stopped_at_step": str(stop.step)})
            return None
        return _log_outcome(setup, params, plan, paths, out, run, result, reporter)


def _log_outcome(setup: TrialSetup, params: Any, plan: Any, paths: Any, out: Path, run: Any, result: Any,
                 reporter: _Reporter) -> dict[str, Any]:  # fmt: skip
    """The finished trial's generator model and evaluate scores in its run: the final report's metrics."""
    from gan_pipeline.config import flatten
    from gan_pipeline.data.loading import prepared_dataset
    from gan_pipeline.scoring import sample_and_score
    from gan_pipeline.training.experiment import kept_metrics

    run.log_artifact(paths.plot)
    run.log_metrics(
        {"train_images_per_s": result.images_per_s, "train_seconds": result.seconds}, result.steps
    )
    kept = kept_metrics(result.kept, plan.exp.monitor.score) if result.kept is not None else {}
    spec = plan.spec
    model_uri = run.log_generator(result.sampling_generator, plan.exp.model.latent_dim, spec.conditional,
                                  spec.value_range, paths.generator)  # fmt: skip
    evaluation = sample_and_score(params, paths.generator, out / "samples.npz", setup.data, setup.classifier,
                                  setup.classifier_metrics, setup.inception_reference)  # fmt: skip
    scores = {**evaluation.metrics, **kept}
    run.log_stage_params({**flatten(params.sample, "sample."), **flatten(params.evaluate, "evaluate.")})
    run.log_scores(scores, result.steps, prepared_dataset(setup.data, "test"))
    run.set_tags(
        {"sweep.stopped_early": "false", **({"generator_model_uri": model_uri} if model_uri else {})}
    )
    numbers = {k: v for k, v in scores.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {**numbers, "score": reporter.last_score, "step": result.steps, "completed": 1,
            "resumed_from": result.resumed_from, "mlflow_run_id": run.id}  # fmt: skip


def _shown_path(path: Path, root: Path) -> str:
    """`path` relative to the repository (as dvc.lock names it) when it is inside it."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(root.resolve()))
    return str(path)


def pull_inputs(setup: TrialSetup) -> None:
    """`dvc pull` the inputs that this node lacks from the DVC remote, in the node's copy of the repository
    (setup.root), one trial at a time per node; DataError when the pull fails."""
    missing = [p for p in (setup.data, setup.stats, setup.classifier, setup.classifier_metrics,
                           setup.inception_reference) if not p.exists()]  # fmt: skip
    if not missing:
        return
    lock = setup.root / ".dvc" / "tmp" / "sweep-pull.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # trials that start together on one node pull once
        still = [p for p in missing if not p.exists()]
        if not still:
            return
        targets = [_shown_path(p, setup.root) for p in still]
        proc = subprocess.run(["dvc", "pull", *targets], cwd=setup.root, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"dvc pull {' '.join(targets)} in {setup.root} failed: {tail[0]}")
