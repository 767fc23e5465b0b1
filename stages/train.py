"""train: train one experiment's D and G (model and hyperparameters from experiments.<name> in params.yaml),
log params, per-step losses, D(x), D(G(z)) and the generator to MLflow, and write the weights, the loss
log for `dvc plots` and run.json (the MLflow run id that sample and evaluate log into). Checkpoints every
train.checkpoint_every steps; run again after a crash, it resumes from the checkpoint (and its MLflow run).
With monitor.eval_every set, the mode-collapse alarm classifies a fixed batch of samples every eval_every
epochs and logs digit coverage and the class-histogram KL (MLflow and --eval-log), warning or stopping on
collapse. Under `torchrun --nproc_per_node N` it trains data-parallel (README: "Distributed training"):
each process takes its share of every train.batch_size batch; rank 0 alone writes outputs and logs to MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gan_pipeline import tracking
from gan_pipeline.config import data_config, experiment, experiment_key, flatten, load_params
from gan_pipeline.data.streaming import train_batches, train_size
from gan_pipeline.errors import ParamsError, exit_on_error
from gan_pipeline.io import load_module, read_json, save_weights, write_csv, write_json
from gan_pipeline.models import GAN_MODELS
from gan_pipeline.models.classifier import DigitClassifier
from gan_pipeline.plots import plot_training
from gan_pipeline.provenance import file_md5, run_tags
from gan_pipeline.runtime import device
from gan_pipeline.training import distributed
from gan_pipeline.training.checkpoint import resume_point
from gan_pipeline.training.loop import Checkpointing, train_gan
from gan_pipeline.training.monitor import MONITOR_COLUMNS, CollapseMonitor


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", required=True, help="a key of `experiments` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file")
    parser.add_argument("--stats", type=Path, required=True, help="the prepared data's stats JSON")
    parser.add_argument("--out", type=Path, required=True, help="folder for weights, run.json and plots")
    parser.add_argument("--log", type=Path, required=True, help="loss log CSV (dvc plots) to write")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="training checkpoint to resume from and write (default: OUT/checkpoint.safetensors)",
    )
    parser.add_argument(
        "--classifier", type=Path, help="digit classifier weights, for the mode-collapse alarm (monitor)"
    )
    parser.add_argument(
        "--eval-log", type=Path, help="coverage log CSV (dvc plots) of the mode-collapse alarm to write"
    )
    args = parser.parse_args(argv)
    replicas = distributed.start()
    try:
        _train(args, replicas)
    finally:
        distributed.stop()


def _train(args: argparse.Namespace, replicas: distributed.Replicas) -> None:
    params = load_params(args.params)
    exp = experiment(params, args.experiment)
    key = experiment_key(params, args.experiment)

    if exp.monitor.eval_every is not None and (args.classifier is None or args.eval_log is None):
        raise ParamsError(
            f"{args.params}: {key}.monitor.eval_every: the mode-collapse alarm needs "
            "--classifier and --eval-log, got none (set it to null to turn the alarm off)"
        )
    n_train = train_size(args.data)
    if exp.train.batch_size > n_train:
        raise ParamsError(
            f"{args.params}: {key}.train.batch_size: expected at most the "
            f"{n_train} training images, got {exp.train.batch_size}"
        )
    if exp.train.batch_size % replicas.world_size:
        raise ParamsError(
            f"{args.params}: {key}.train.batch_size: expected a multiple of the "
            f"{replicas.world_size} torchrun processes, got {exp.train.batch_size}"
        )
    if replicas.distributed and exp.model.minibatch_kernels:
        raise ParamsError(
            f"{args.params}: {key}.model.minibatch_kernels: expected 0 under "
            f"torchrun (each process would compare only its share of the batch), got "
            f"{exp.model.minibatch_kernels}"
        )
    # MNIST-sized data lives on the device as one tensor; faces stream from the HDF5 file.
    spec = GAN_MODELS[exp.model.name]
    batches = train_batches(args.data, spec.value_range, exp.train.batch_size, device())
    content_hash = read_json(args.stats)["content_hash"]
    checkpoint_path = args.checkpoint or args.out / "checkpoint.safetensors"
    identity = {f"{key}.{k}": v for k, v in flatten(exp).items()}
    identity["data content hash"] = content_hash
    resume, note = resume_point(checkpoint_path, identity, exp.train.epochs * len(batches))
    if not replicas.is_main:  # the other ranks train in step with rank 0, which writes and logs alone
        checkpointing = Checkpointing(checkpoint_path, identity, resume)
        train_gan(exp, batches, None, _monitor(args, params, exp, None, resume), checkpointing=checkpointing)
        return
    print(note)

    run_params = {**flatten(exp), **flatten(data_config(params, exp), "data.")}
    tags = {**run_tags(tracking.repo_root(), [str(args.data)], content_hash), "experiment": args.experiment}
    earlier_run = resume.extra.get("mlflow_run_id") if resume else None
    with tracking.run(params.tracking, args.experiment, run_params, tags, resume=earlier_run) as run:
        print(f"MLflow run {run.id} in {run.uri}{' (resumed)' if run.resumed else ''}")
        checkpointing = Checkpointing(checkpoint_path, identity, resume, {"mlflow_run_id": run.id})
        monitor = _monitor(args, params, exp, run.log_step, resume)
        if monitor is not None:
            checkpointing.extra["monitor_rows"] = monitor.rows  # each checkpoint carries the checks so far
        result = train_gan(exp, batches, run.log_step, monitor, checkpointing=checkpointing)

        # With train.ema_decay the EMA of G's weights is the generator that sample and evaluate use.
        config = {"model": flatten(exp.model)}
        save_weights(args.out / "generator.safetensors", result.sampling_generator, config)
        save_weights(args.out / "discriminator.safetensors", result.discriminator, config)
        write_csv(args.log, result.history)
        if args.eval_log is not None:
            write_csv(args.eval_log, monitor.rows if monitor else [], MONITOR_COLUMNS)
        plot_path = args.out / "training.png"
        plot_training(result.history, args.experiment, plot_path)
        run.log_artifact(plot_path)
        run.log_metrics(
            {"train_images_per_s": result.images_per_s, "train_seconds": result.seconds}, result.steps
        )
        model_uri = run.log_generator(result.sampling_generator, exp.model.latent_dim, spec.conditional)
        generator_md5 = file_md5(args.out / "generator.safetensors")
        model_tag = {"generator_model_uri": model_uri} if model_uri else {}
        run.set_tags({"generator_md5": generator_md5, "precision": result.precision, **model_tag})
        write_json(
            args.out / "run.json",
            {
                "experiment": args.experiment,
                "run_id": run.id,
                "tracking_uri": run.uri,
                "model_uri": model_uri,
                "generator_md5": generator_md5,
                "steps": result.steps,
                "train_seconds": round(result.seconds, 2),
                "train_images_per_s": round(result.images_per_s, 1),
                "precision": result.precision,
            },
        )
        print(
            f"{args.experiment}: {result.steps} steps in {result.seconds:.0f} s "
            f"({result.images_per_s:.0f} real images/s, {result.precision}); run {run.id}"
        )


def _monitor(args: argparse.Namespace, params, exp, log, resume) -> CollapseMonitor | None:
    """The mode-collapse alarm when monitor.eval_every is set (every rank runs it, so all stop together),
    going on from the checks that the checkpoint `resume` carries."""
    if exp.monitor.eval_every is None:
        return None
    classifier, _ = load_module(args.classifier, lambda c: DigitClassifier(c["feature_dim"]))
    cov = params.evaluate
    return CollapseMonitor(
        exp.monitor,
        classifier.to(device()),
        GAN_MODELS[exp.model.name],
        exp.model.latent_dim,
        cov.coverage_confidence,
        cov.coverage_min_fraction,
        log,
        rows=resume.extra.get("monitor_rows") if resume else None,
    )


if __name__ == "__main__":
    main()
