"""The reference stage's work: standard Inception features of the real test digits, computed once and read
back by every evaluate, and the real-vs-real floor of the Inception metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan_pipeline.config import EvaluateConfig
from gan_pipeline.data.loading import load_split
from gan_pipeline.errors import DataError
from gan_pipeline.io import atomic_path
from gan_pipeline.metrics.inception import FID_INCEPTION_IMPLEMENTATION, InceptionFeatures, inception_features
from gan_pipeline.metrics.suite import feature_metrics, real_floor, seeded_pick, split_sample_sizes
from gan_pipeline.runtime import device


def inception_reference(
    data: Path, cfg: EvaluateConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float], dict[str, Any]]:
    """The reference stage's work: Inception features (float32, (inception_n, 2048)) of inception_n seeded
    test digits, their indices, the scores of the real-vs-real floor (as many seeded train images vs the
    same test images), and what describes them (sample sizes, the network and its weights, its
    throughput in images/s). inception_n 0: no features, no scores."""
    test_u8, _ = load_split(data, "test")
    train_u8, _ = load_split(data, "train")
    test_pick = seeded_pick(len(test_u8), cfg.inception_n, seed).numpy()
    if cfg.inception_n == 0:
        return np.zeros((0, 2048), np.float32), test_pick, {}, {"sample_sizes": {"inception_n": 0}}
    model = InceptionFeatures(cfg.inception_weights).to(device())
    start = time.perf_counter()
    real = inception_features(model, test_u8[test_pick], cfg.inception_batch_size, cfg.inception_bf16)
    rate = len(real) / (time.perf_counter() - start)

    def floor_metrics(test_features: torch.Tensor, train_images: np.ndarray) -> dict[str, Any]:
        train = inception_features(model, train_images, cfg.inception_batch_size, cfg.inception_bf16)
        return feature_metrics("inception", test_features, train, cfg)

    floor, _ = real_floor(floor_metrics, real, train_u8, len(real), seed + 1)
    scores, sizes = split_sample_sizes(
        {k.replace("inception", "inception_real_floor", 1): v for k, v in floor.items()}
    )
    info = {
        "sample_sizes": sizes,
        "inception_implementation": FID_INCEPTION_IMPLEMENTATION,
        "inception_weights": model.weights_file(),
        "inception_bf16": cfg.inception_bf16,
        "inception_images_per_s": rate,
    }
    return real.float().numpy(), test_pick, scores, info


def save_reference(path: Path, features: np.ndarray, test_indices: np.ndarray) -> None:
    """The reference features file (.npz: `features`, `test_indices`), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=features, test_indices=test_indices)


def load_reference(path: Path, cfg: EvaluateConfig) -> torch.Tensor:
    """The reference stage's test features as float64; DataError when the file is not one or is empty."""
    try:
        with np.load(path) as npz:
            real = torch.from_numpy(npz["features"]).double()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a features file from the reference stage ({exc})") from None
    if len(real) < 2:
        raise DataError(
            f"{path}: {len(real)} reference features, expected evaluate.inception_n = {cfg.inception_n} "
            "(re-run the reference stage with the same params)"
        )
    return real
