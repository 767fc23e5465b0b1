"""evaluate: score one experiment's samples with the digit classifier against the test split: FID in
classifier features (beside the real-vs-real floor), KID, precision/recall/density/coverage, digit
coverage, the class histogram and its KL from uniform, and for conditional models label accuracy and
intra-class FID. Writes DVC metrics and logs them to the MLflow run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gan_pipeline.config import load_params
from gan_pipeline.data.loading import load_split, to_float
from gan_pipeline.errors import DataError, exit_on_error
from gan_pipeline.io import load_module, read_json, write_json
from gan_pipeline.metrics.coverage import class_histogram, digit_coverage, kl_from_uniform, label_accuracy
from gan_pipeline.metrics.fid import fid_classifier, intra_class_fid
from gan_pipeline.metrics.kid import kid
from gan_pipeline.metrics.prdc import features_of, prdc
from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier
from gan_pipeline.tracking import Tracker
from gan_pipeline.training.classifier import predict_proba


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (evaluate, tracking sections)")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file (its test split)")
    parser.add_argument("--classifier", type=Path, required=True, help="classifier weights")
    parser.add_argument("--classifier-metrics", type=Path, required=True, help="classifier metrics JSON")
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
    histogram = class_histogram(probs, cfg.coverage_confidence)
    kid_mean, kid_std = kid(features, real, fake, cfg.kid_subset_size, cfg.kid_subsets)
    fidelity = prdc(features_of(features, real), features_of(features, fake), cfg.prdc_nearest_k)
    metrics = {
        "fid_classifier": fid_classifier(features, real, fake),
        "fid_classifier_real_floor": read_json(args.classifier_metrics)["fid_classifier_real_floor"],
        "fid_n_fake": len(fake),
        "fid_n_real": len(real),
        "kid_classifier": kid_mean,
        "kid_classifier_std": kid_std,
        "kid_subset_size": min(cfg.kid_subset_size, len(real), len(fake)),
        **{f"prdc_{name}": value for name, value in fidelity.items()},
        "prdc_nearest_k": cfg.prdc_nearest_k,
        "coverage": digit_coverage(histogram, len(fake), cfg.coverage_min_fraction),
        "kl_from_uniform": kl_from_uniform(histogram),
        "confident_fraction": sum(histogram) / len(fake),
        "class_histogram": {str(d): n for d, n in enumerate(histogram)},
    }
    if requested is not None:
        metrics["label_accuracy"] = label_accuracy(probs, requested)
        per_class = intra_class_fid(features, real, torch.from_numpy(real_labels).long(), fake, requested)
        metrics["fid_classifier_intra_class"] = per_class.pop("mean")
        metrics["fid_classifier_per_class"] = per_class
    write_json(args.metrics, metrics)

    run = read_json(args.run)
    Tracker(params.tracking.experiment_name).log_metrics(run["run_id"], metrics, step=run["steps"])
    shown = {
        k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "class_histogram"
    }
    print(f"{run['experiment']}: {shown}")


if __name__ == "__main__":
    main()
