"""classifier: train the digit classifier that judges coverage and supplies FID features, report its
test accuracy and the real-vs-real FID floor (train split vs test split) in its features."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gan_pipeline.config import load_params
from gan_pipeline.data.loading import load_split, to_float
from gan_pipeline.errors import exit_on_error
from gan_pipeline.io import save_weights, write_json
from gan_pipeline.metrics.fid import fid
from gan_pipeline.metrics.suite import real_floor
from gan_pipeline.models.classifier import ClassifierFeatures
from gan_pipeline.training.classifier import accuracy, train_classifier


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (classifier, sample sections)")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file")
    parser.add_argument("--out", type=Path, required=True, help="classifier weights (.safetensors) to write")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)

    train_u8, train_labels = load_split(args.data, "train")
    test_u8, test_labels = load_split(args.data, "test")
    train_x, test_x = to_float(train_u8, (-1.0, 1.0)), to_float(test_u8, (-1.0, 1.0))
    start = time.perf_counter()
    model, history = train_classifier(train_x, torch.from_numpy(train_labels).long(), params.classifier)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(model, test_x, torch.from_numpy(test_labels).long())

    # The floor: FID between real test images and as many real train images as evaluate scores generated
    # ones; the train images in the order drawn, as the recorded floors were computed.
    features = ClassifierFeatures(model)
    floor, n_real = real_floor(
        lambda test, train: fid(features, test, train),
        test_x,
        train_x,
        params.sample.n_samples,
        params.classifier.seed,
        sort=False,
    )

    save_weights(args.out, model, {"feature_dim": params.classifier.feature_dim})
    write_json(
        args.metrics,
        {
            "test_accuracy": test_accuracy,
            "train_accuracy": history[-1]["train_accuracy"],
            "n_train": len(train_x),
            "n_test": len(test_x),
            "fid_classifier_real_floor": floor,
            "fid_real_floor_n_train": n_real,
            "fid_real_floor_n_test": len(test_x),
        },
    )
    print(f"classifier: test accuracy {test_accuracy:.4f} after {seconds:.0f} s; real FID floor {floor:.3f}")


if __name__ == "__main__":
    main()
