"""evaluate_faces: score one face experiment's samples against the prepared test faces with the standard TF
Inception features (fid_inception, kid_inception, prdc_inception_*: evaluate.inception_n samples vs as many
seeded test faces) and, as a sanity line, the per-channel mean/std of samples vs real. Writes DVC metrics
and logs them to the MLflow run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gan_pipeline import tracking
from gan_pipeline.config import load_params
from gan_pipeline.data.streaming import face_counts, read_faces
from gan_pipeline.errors import DataError, exit_on_error
from gan_pipeline.io import read_json, write_json
from gan_pipeline.metrics.faces import channel_report
from gan_pipeline.metrics.inception import InceptionFeatures, inception_features
from gan_pipeline.metrics.suite import FEATURE_BACKENDS, feature_metrics, seeded_pick
from gan_pipeline.runtime import device


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (evaluate, sample.seed, tracking)"
    )
    parser.add_argument("--data", type=Path, required=True, help="prepared face HDF5 file (its test split)")
    parser.add_argument("--samples", type=Path, required=True, help="samples .npz from the sample stage")
    parser.add_argument("--run", type=Path, required=True, help="run.json from the train stage")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.evaluate

    try:
        with np.load(args.samples) as npz:
            fake = npz["images"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{args.samples}: not a samples file from the sample stage ({exc})") from None
    _, n_test, _ = face_counts(args.data)
    real = read_faces(args.data, "test", indices=seeded_pick(n_test, len(fake), params.sample.seed).numpy())
    if fake.ndim != 4 or fake.shape[1:] != real.shape[1:]:
        raise DataError(
            f"{args.samples}: samples are {fake.shape[1:]}, but {args.data} holds {real.shape[1:]}"
        )
    metrics: dict = {}
    if cfg.inception_n > 0:
        pick = seeded_pick(n_test, cfg.inception_n, params.sample.seed + 1).numpy()
        model = InceptionFeatures(cfg.inception_weights).to(device())
        start = time.perf_counter()
        real_f = inception_features(model, read_faces(args.data, "test", indices=pick),
                                    cfg.inception_batch_size, cfg.inception_bf16)  # fmt: skip
        fake_f = inception_features(
            model, fake[: cfg.inception_n], cfg.inception_batch_size, cfg.inception_bf16
        )
        rate = (len(real_f) + len(fake_f)) / (time.perf_counter() - start)
        metrics.update(feature_metrics("inception", real_f, fake_f, cfg))
        metrics["inception_images_per_s"] = rate
        metrics["feature_backend"] = {"inception": FEATURE_BACKENDS["inception"]}
    metrics.update(channel_report(real, fake))
    write_json(args.metrics, metrics)

    run = read_json(args.run)
    with tracking.attach(params.tracking, run["run_id"]) as mlflow_run:
        mlflow_run.log_metrics(metrics, step=run["steps"])
        if cfg.inception_n > 0:
            print(
                f"{run['experiment']}: fid_inception {metrics['fid_inception']:.2f}, kid_inception "
                f"{metrics['kid_inception']:.4f} ± {metrics['kid_inception_std']:.4f}, precision/recall "
                f"{metrics['prdc_inception_precision']:.3f}/{metrics['prdc_inception_recall']:.3f} "
                f"({metrics['fid_inception_n_fake']} samples vs "
                f"{metrics['fid_inception_n_real']} test faces, "
                f"{metrics['inception_images_per_s']:.1f} images/s)"
            )
        else:
            print(f"{run['experiment']}: evaluate.inception_n is 0: no Inception metrics")
        print(
            f"{run['experiment']}: per-channel mean (r, g, b) samples "
            f"{[round(metrics[f'channel_mean_fake_{c}'], 3) for c in 'rgb']} vs real "
            f"{[round(metrics[f'channel_mean_real_{c}'], 3) for c in 'rgb']}; std samples "
            f"{[round(metrics[f'channel_std_fake_{c}'], 3) for c in 'rgb']} vs real "
            f"{[round(metrics[f'channel_std_real_{c}'], 3) for c in 'rgb']} "
            f"({metrics['channel_n_fake']} samples, {metrics['channel_n_real']} real test faces)"
        )


if __name__ == "__main__":
    main()
