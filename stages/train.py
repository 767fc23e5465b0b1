"""train: train one experiment's D and G (model and hyperparameters from experiments.<name> in params.yaml),
log params, per-step losses, D(x), D(G(z)) and the generator to MLflow, and write the weights, the loss
log for `dvc plots` and run.json (the MLflow run id that sample and evaluate log into). The run is named
`<experiment>-<DVC experiment or short commit>` and has the prepared train split as its dataset input.
Checkpoints every train.checkpoint_every steps; run again after a crash, it resumes from the checkpoint (and
its MLflow run), its time and speed counted over the whole training.
With monitor.eval_every set, a fixed batch of samples is scored every eval_every epochs (digit coverage,
the class-histogram KL, fid_classifier against training digits, or with monitor.score fid_inception the
Inception FID against the reference's training-digit features; MLflow and --eval-log): the best check's
generator is the one written (monitor.keep_best), and the mode-collapse and divergence alarms warn or stop.
Under `torchrun --nproc_per_node N` it trains data-parallel (README: "Distributed training"):
each process takes its share of every train.batch_size batch; rank 0 alone writes outputs and logs to MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This checkout's own package first: the editable install points at the workspace's src/, which a
# `dvc exp run --temp/--queue` copy must not run (README, "Sweeps with the DVC queue").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gan_pipeline.cli import run_stage
from gan_pipeline.errors import exit_on_error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--experiment", required=True, help="a key of `experiments` in params.yaml")
    p.add_argument("--params", default="params.yaml", help="params file")
    p.add_argument("--data", type=Path, required=True, help="prepared HDF5 file")
    p.add_argument("--stats", type=Path, required=True, help="the prepared data's stats JSON")
    p.add_argument("--out", type=Path, required=True, help="folder for weights, run.json and plots")
    p.add_argument("--log", type=Path, required=True, help="loss log CSV (dvc plots) to write")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="training checkpoint to resume from and write (default: OUT/checkpoint.safetensors)",
    )
    p.add_argument(
        "--classifier", type=Path, help="digit classifier weights, for the in-training checks (monitor)"
    )
    p.add_argument("--eval-log", type=Path, help="log CSV (dvc plots) of the in-training checks to write")
    p.add_argument(
        "--steps", type=Path, help="folder for each in-training check's sample grid (step_<step>.png)"
    )
    p.add_argument(
        "--inception-reference",
        type=Path,
        help="the reference stage's features file, for the checks of monitor.score fid_inception",
    )
    return p


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # torch, mlflow and the rest load after parsing, so that --help answers at once.
    from gan_pipeline.config import load_params
    from gan_pipeline.runtime import use_threads
    from gan_pipeline.training import distributed, processes
    from gan_pipeline.training.experiment import ExperimentPaths, plan_training, train_experiment

    params = load_params(args.params)
    use_threads(params.runtime.threads)
    checkpoint = args.checkpoint or args.out / "checkpoint.safetensors"
    paths = ExperimentPaths(
        args.data,
        args.stats,
        args.out,
        args.log,
        checkpoint,
        args.classifier,
        args.eval_log,
        args.steps,
        args.inception_reference,
    )
    processes.end_with_dvc()  # killing dvc alone must not leave the trainer running
    replicas = distributed.start()
    try:
        if not replicas.is_main:  # the other ranks train in step with rank 0, which writes and logs alone
            plan = plan_training(params, args.params, args.experiment, paths, replicas.world_size)
            train_experiment(plan, paths, write_outputs=False)
            return
        with processes.one_trainer(checkpoint):  # one trainer per checkpoint, and so per MLflow run
            plan = plan_training(params, args.params, args.experiment, paths, replicas.world_size)
            _train_and_log(params, plan, paths)
    finally:
        distributed.stop()


def _train_and_log(params, plan, paths) -> None:
    """Train the planned experiment in its MLflow run (reopened when resuming), and write run.json."""
    from gan_pipeline import tracking
    from gan_pipeline.data.loading import prepared_dataset
    from gan_pipeline.io import write_json
    from gan_pipeline.provenance import environment, run_name, run_tags
    from gan_pipeline.sampling import grid_image
    from gan_pipeline.training.experiment import train_experiment

    print(plan.note)
    root = tracking.repo_root()
    tags = {
        **run_tags(root, [str(paths.data)], plan.content_hash, "stages/train.py"),
        **tracking.info_tags({"environment": environment()}),  # env.torch, env.threads, ...
        "experiment": plan.name,
    }
    journal = paths.out / tracking.JOURNAL_NAME  # what the store does not take waits here
    earlier = plan.earlier_run_id
    name = run_name(root, plan.name)
    with tracking.run(params.tracking, name, plan.run_params, tags, earlier, journal=journal) as run:
        print(f"MLflow run {run.id} in {run.uri}{' (resumed)' if run.resumed else ''}")
        run.log_dataset(prepared_dataset(paths.data, "train"), "training")
        # each in-training check is a LoggedModel of the run, its scores linked to it
        on_check = lambda step, scores: run.log_snapshot(f"{plan.name}-step{step}", step, scores)  # noqa: E731
        # and its samples of the same latents a 10x10 grid, an image over steps
        on_samples = lambda step, images: run.log_image("samples", grid_image(images, 10), step)  # noqa: E731
        extra = {"mlflow_run_id": run.id}
        result = train_experiment(plan, paths, run.log_step, extra, on_check=on_check, on_samples=on_samples)
        record = {**_log_result(run, plan, paths, result), "environment": environment()}
        write_json(paths.out / "run.json", record)
        print(
            f"{plan.name}: {result.steps} steps in {result.seconds:.0f} s "
            f"({result.images_per_s:.0f} real images/s, {result.precision}); run {run.id}"
        )


def _log_result(run, plan, paths, result) -> dict:
    """Log the loss plot, the speed, the generator and its md5 to the run; return run.json's record. A
    resumed run with no step left to train keeps the generator model it logged (no second copy)."""
    from gan_pipeline.provenance import file_md5
    from gan_pipeline.training.experiment import kept_metrics, run_record

    run.log_artifact(paths.plot)
    speed = {"train_images_per_s": result.images_per_s, "train_seconds": result.seconds}
    run.log_metrics(speed, result.steps)
    if result.kept is not None:  # the check whose generator is the stage's (monitor.keep_best)
        run.log_metrics(kept_metrics(result.kept, plan.exp.monitor.score), result.steps)
    model_uri = run.generator_model_uri() if run.resumed and result.steps == result.resumed_from else None
    if model_uri is None:
        model_uri = run.log_generator(
            result.sampling_generator,
            plan.exp.model.latent_dim,
            plan.spec.conditional,
            plan.spec.value_range,
            paths.generator,
        )
    generator_md5 = file_md5(paths.generator)
    model_tag = {"generator_model_uri": model_uri} if model_uri else {}
    run.set_tags({"generator_md5": generator_md5, "precision": result.precision, **model_tag})
    return run_record(plan, run.id, run.recorded_uri, model_uri, generator_md5, result)


if __name__ == "__main__":
    run_stage(main)
