"""The reference stage's work: standard Inception features of the real test digits, computed once and read
back by every evaluate, and the real-vs-real floor of the Inception metrics."""

from __future__ import annotations

import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan_pipeline.config import EvaluateConfig
from gan_pipeline.data.loading import load_split
from gan_pipeline.errors import DataError, first_line
from gan_pipeline.io import atomic_path
from gan_pipeline.metrics.inception import (
    FID_INCEPTION_IMPLEMENTATION,
    InceptionFeatures,
    inception_features,
    resolve_precision,
)
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
    precision = resolve_precision(cfg.inception_precision, device())
    start = time.perf_counter()
    real = inception_features(
        model, test_u8[test_pick], cfg.inception_batch_size, precision, "inception: test digits"
    )
    rate = len(real) / (time.perf_counter() - start)

    def floor_metrics(test_features: torch.Tensor, train_images: np.ndarray) -> dict[str, Any]:
        train = inception_features(
            model, train_images, cfg.inception_batch_size, precision, "inception: train digits (floor)"
        )
        return feature_metrics("inception", test_features, train, cfg)

    floor, _ = real_floor(floor_metrics, real, train_u8, len(real), seed + 1)
    scores, sizes = split_sample_sizes(
        {k.replace("inception", "inception_real_floor", 1): v for k, v in floor.items()}
    )
    info = {
        "sample_sizes": sizes,
        "inception_implementation": FID_INCEPTION_IMPLEMENTATION,
        "inception_weights": model.weights_file(),
        "inception_precision": precision,
        "inception_images_per_s": rate,
    }
    return real.float().numpy(), test_pick, scores, info


def save_reference(
    path: Path, features: np.ndarray, test_indices: np.ndarray, precision: str = "fp32"
) -> None:
    """The reference features file (.npz: `features`, `test_indices`, `precision`: fp32 or bf16, the path
    that computed them), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=features, test_indices=test_indices, precision=np.array(precision))


def load_reference(path: Path, cfg: EvaluateConfig, precision: str = "fp32") -> torch.Tensor:
    """The reference stage's test features as float64 (N, 2048); a one-line DataError when the file is
    missing, truncated or corrupt, not such features, holds more than evaluate.inception_n or too few
    (at least 2, and more than evaluate.prdc_nearest_k) of them, or was computed in another precision than
    `precision` (the fakes' features: real and fake sides must come from the same path, or FID measures
    bf16's rounding as well as the samples)."""
    try:
        with np.load(path) as npz:
            features = npz["features"]
            made_with = str(npz["precision"]) if "precision" in npz.files else "fp32"
    except FileNotFoundError:
        raise DataError(f"{path}: reference features not found (run the reference stage first)") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = first_line(exc)
        raise DataError(f"{path}: not a features file from the reference stage ({reason})") from None
    width = InceptionFeatures.num_features
    if features.ndim != 2 or features.shape[1] != width or not np.issubdtype(features.dtype, np.floating):
        raise DataError(
            f"{path}: 'features' is {features.dtype} {features.shape}, expected floats (N, {width}) "
            "(run the reference stage again)"
        )
    if not np.isfinite(features).all():
        raise DataError(f"{path}: 'features' holds NaN or infinite values (run the reference stage again)")
    if not max(2, cfg.prdc_nearest_k + 1) <= len(features) <= cfg.inception_n:
        raise DataError(
            f"{path}: {len(features)} reference features, expected evaluate.inception_n = {cfg.inception_n} "
            f"(at least {max(2, cfg.prdc_nearest_k + 1)}; re-run the reference stage with the same params)"
        )
    if made_with != precision:
        raise DataError(
            f"{path}: reference features computed in {made_with}, but the samples' features are {precision} "
            "(evaluate.inception_precision resolves differently on this machine; re-run the reference stage)"
        )
    return torch.from_numpy(features).double()
