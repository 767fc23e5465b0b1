"""evaluate: score one experiment's samples against the test split in two feature spaces, each metric named
after its backend: the digit classifier's (fid_classifier beside the real-vs-real floor, KID,
precision/recall/density/coverage, for conditional models intra-class FID) and the standard TF Inception's
(fid_inception, kid_inception, prdc_inception_*, on evaluate.inception_n samples against the reference
stage's test features). Also digit coverage, the class histogram and its KL from uniform, and for
conditional models label accuracy. Writes DVC metrics and logs them to the MLflow run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gan_pipeline import tracking
from gan_pipeline.config import load_params
from gan_pipeline.data.loading import load_split, to_float
from gan_pipeline.errors import DataError, exit_on_error
from gan_pipeline.io import load_module, read_json, write_json
from gan_pipeline.metrics.coverage import digit_report, label_accuracy
from gan_pipeline.metrics.fid import intra_class_fid
from gan_pipeline.metrics.inception import InceptionFeatures, inception_features
from gan_pipeline.metrics.prdc import features_of
from gan_pipeline.metrics.suite import FEATURE_BACKENDS, feature_metrics
from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier
from gan_pipeline.runtime import device
from gan_pipeline.training.classifier import predict_proba


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (evaluate, tracking sections)")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file (its test split)")
    parser.add_argument("--classifier", type=Path, required=True, help="classifier weights")
    parser.add_argument("--classifier-metrics", type=Path, required=True, help="classifier metrics JSON")
    parser.add_argument(
        "--inception-reference", type=Path, required=True, help="reference stage's Inception features .npz"
    )
    parser.add_argument("--samples", type=Path, required=True, help="samples .npz from the sample stage")
    parser.add_argument("--run", type=Path, required=True, help="run.json from the train stage")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.evaluate

    classifier, _ = load_module(args.classifier, lambda c: DigitClassifier(c["feature_dim"]))
    try:
        with np.load(args.samples) as npz:
            fake_u8 = npz["images"]
            requested = torch.from_numpy(npz["labels"]) if "labels" in npz else None
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{args.samples}: not a samples file from the sample stage ({exc})") from None
    fake = to_float(fake_u8, (-1.0, 1.0))
    real_u8, real_labels = load_split(args.data, "test")
    real = to_float(real_u8, (-1.0, 1.0))

    features = ClassifierFeatures(classifier)
    probs = predict_proba(classifier, fake)
    metrics = {
        **feature_metrics("classifier", features_of(features, real), features_of(features, fake), cfg),
        "fid_classifier_real_floor": read_json(args.classifier_metrics)["fid_classifier_real_floor"],
        "prdc_nearest_k": cfg.prdc_nearest_k,
        **digit_report(probs, cfg.coverage_confidence, cfg.coverage_min_fraction),
    }
    if requested is not None:
        metrics["label_accuracy"] = label_accuracy(probs, requested)
        per_class = intra_class_fid(features, real, torch.from_numpy(real_labels).long(), fake, requested)
        metrics["fid_classifier_intra_class"] = per_class.pop("mean")
        metrics["fid_classifier_per_class"] = per_class
    if cfg.inception_n > 0:
        metrics.update(inception_metrics(args.inception_reference, fake_u8, cfg))
    metrics["feature_backend"] = {k: v for k, v in FEATURE_BACKENDS.items() if f"fid_{k}" in metrics}
    write_json(args.metrics, metrics)

    run = read_json(args.run)
    with tracking.attach(params.tracking, run["run_id"]) as mlflow_run:
        mlflow_run.log_metrics(metrics, step=run["steps"])
        shown = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in metrics.items()
            if k != "class_histogram"
        }
        print(f"{run['experiment']}: {shown}")


def inception_metrics(reference: Path, fake_u8: np.ndarray, cfg) -> dict[str, float | int]:
    """fid_inception, kid_inception and prdc_inception_* of the first inception_n samples vs the reference."""
    try:
        with np.load(reference) as npz:
            real = torch.from_numpy(npz["features"]).double()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{reference}: not a features file from the reference stage ({exc})") from None
    if len(real) < 2:
        raise DataError(
            f"{reference}: {len(real)} reference features, expected evaluate.inception_n = {cfg.inception_n} "
            "(re-run the reference stage with the same params)"
        )
    model = InceptionFeatures(cfg.inception_weights).to(device())
    fake = inception_features(model, fake_u8[: cfg.inception_n], cfg.inception_batch_size, cfg.inception_bf16)
    return feature_metrics("inception", real, fake, cfg)


if __name__ == "__main__":
    main()
