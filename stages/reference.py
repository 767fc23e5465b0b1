"""reference: standard Inception features of the real test split, computed once for every evaluate, and the
real-vs-real floor of the Inception metrics (as many seeded train images as evaluate scores samples, vs
the same test images). evaluate.inception_n = 0 writes an empty reference and skips the network."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gan_pipeline.config import load_params
from gan_pipeline.data.loading import load_split
from gan_pipeline.errors import exit_on_error
from gan_pipeline.io import atomic_path, write_json
from gan_pipeline.metrics.inception import FID_INCEPTION_IMPLEMENTATION, InceptionFeatures, inception_features
from gan_pipeline.metrics.suite import feature_metrics, real_floor, seeded_pick
from gan_pipeline.runtime import device


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (evaluate, sample.seed)")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file")
    parser.add_argument("--features", type=Path, required=True, help="reference features .npz to write")
    parser.add_argument("--metrics", type=Path, required=True, help="floor metrics JSON to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.evaluate

    test_u8, _ = load_split(args.data, "test")
    train_u8, _ = load_split(args.data, "train")
    test_pick = seeded_pick(len(test_u8), cfg.inception_n, params.sample.seed).numpy()
    metrics: dict = {"inception_n": cfg.inception_n}
    features = np.zeros((0, 2048), np.float32)
    if cfg.inception_n > 0:
        model = InceptionFeatures(cfg.inception_weights).to(device())
        start = time.perf_counter()
        real = inception_features(model, test_u8[test_pick], cfg.inception_batch_size, cfg.inception_bf16)
        rate = len(real) / (time.perf_counter() - start)

        def floor_metrics(test_features, train_images):
            train = inception_features(model, train_images, cfg.inception_batch_size, cfg.inception_bf16)
            return feature_metrics("inception", test_features, train, cfg)

        floor, _ = real_floor(floor_metrics, real, train_u8, len(real), params.sample.seed + 1)
        metrics = {
            **{k.replace("inception", "inception_real_floor", 1): v for k, v in floor.items()},
            "inception_images_per_s": rate,
            "inception_bf16": cfg.inception_bf16,
            "inception_implementation": FID_INCEPTION_IMPLEMENTATION,
            "inception_weights": model.source,
        }
        features = real.float().numpy()
        print(f"reference: {len(real)} test images at {rate:.1f} images/s; {metrics}")
    with atomic_path(args.features) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=features, test_indices=test_pick)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
