"""train: train one experiment's D and G (model and hyperparameters from experiments.<name> in params.yaml),
log params, per-step losses, D(x), D(G(z)) and the generator to MLflow, and write the weights, the loss
log for `dvc plots` and run.json (the MLflow run id that sample and evaluate log into)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gan_pipeline.config import data_config, experiment, flatten, load_params
from gan_pipeline.data.streaming import train_batches, train_size
from gan_pipeline.errors import ParamsError, exit_on_error
from gan_pipeline.io import read_json, save_weights, write_csv, write_json
from gan_pipeline.models import GAN_MODELS
from gan_pipeline.plots import plot_training
from gan_pipeline.runtime import device
from gan_pipeline.tracking import Tracker, file_md5, run_tags
from gan_pipeline.training.loop import train_gan


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", required=True, help="a key of `experiments` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file")
    parser.add_argument("--stats", type=Path, required=True, help="the prepared data's stats JSON")
    parser.add_argument("--out", type=Path, required=True, help="folder for weights, run.json and plots")
    parser.add_argument("--log", type=Path, required=True, help="loss log CSV (dvc plots) to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    exp = experiment(params, args.experiment)

    n_train = train_size(args.data)
    if exp.train.batch_size > n_train:
        raise ParamsError(
            f"{args.params}: experiments.{args.experiment}.train.batch_size: expected at most the "
            f"{n_train} training images, got {exp.train.batch_size}"
        )
    tracker = Tracker(params.tracking.experiment_name)
    run_params = {**flatten(exp), **flatten(data_config(params, exp), "data.")}
    tags = run_tags(tracker.root, [str(args.data)], read_json(args.stats)["content_hash"])
    run_id = tracker.start_run(args.experiment, run_params, {**tags, "experiment": args.experiment})
    print(f"MLflow run {run_id} in {tracker.uri}")
    try:
        spec = GAN_MODELS[exp.model.name]
        batches = train_batches(args.data, spec.value_range, exp.train.batch_size, device())
        result = train_gan(exp, batches, tracker.step_logger(run_id))

        config = {"model": flatten(exp.model)}
        save_weights(args.out / "generator.safetensors", result.generator, config)
        save_weights(args.out / "discriminator.safetensors", result.discriminator, config)
        write_csv(args.log, result.history)
        plot_path = args.out / "training.png"
        plot_training(result.history, args.experiment, plot_path)
        tracker.log_artifact(run_id, plot_path)
        tracker.log_metrics(
            run_id, {"train_images_per_s": result.images_per_s, "train_seconds": result.seconds}, result.steps
        )
        model_uri = tracker.log_generator(run_id, result.generator, exp.model.latent_dim, spec.conditional)
        generator_md5 = file_md5(args.out / "generator.safetensors")
        tracker.set_tags(run_id, {"generator_md5": generator_md5, "generator_model_uri": model_uri})
    except BaseException:
        tracker.finish(run_id, failed=True)
        raise
    tracker.finish(run_id)
    write_json(
        args.out / "run.json",
        {
            "experiment": args.experiment,
            "run_id": run_id,
            "tracking_uri": tracker.uri,
            "model_uri": model_uri,
            "generator_md5": generator_md5,
            "steps": result.steps,
            "train_seconds": round(result.seconds, 2),
            "train_images_per_s": round(result.images_per_s, 1),
        },
    )
    print(
        f"{args.experiment}: {result.steps} steps in {result.seconds:.0f} s "
        f"({result.images_per_s:.0f} real images/s); run {run_id}"
    )


if __name__ == "__main__":
    main()
