"""The reference stage's work: standard Inception features of the real test digits, computed once and read
back by every evaluate, and the real-vs-real floor of the Inception metrics, whose training digits'
features are kept too: the in-training checks that rank by fid_inception compare their samples with them
(training digits, so that choosing a snapshot does not look at the test digits evaluate scores)."""

from __future__ import annotations

import time
import zipfile
import zlib
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Reference:
    """What the reference stage computes: Inception features (float32, (n, 2048)) of n = inception_n
    seeded test digits and of as many seeded training digits (the floor's), the test digits' indices,
    the floor's scores (training vs test digits) and what describes them (sample sizes, the network and
    its weights, the precision, its throughput in images/s)."""

    features: np.ndarray
    train_features: np.ndarray
    test_indices: np.ndarray
    metrics: dict[str, float]
    info: dict[str, Any]


def inception_reference(data: Path, cfg: EvaluateConfig, seed: int) -> Reference:
    """The reference stage's work (`Reference`); inception_n 0: no features, no scores."""
    test_u8, _ = load_split(data, "test")
    train_u8, _ = load_split(data, "train")
    test_pick = seeded_pick(len(test_u8), cfg.inception_n, seed).numpy()
    if cfg.inception_n == 0:
        empty = np.zeros((0, 2048), np.float32)
        return Reference(empty, empty, test_pick, {}, {"sample_sizes": {"inception_n": 0}})
    model = InceptionFeatures(cfg.inception_weights).to(device())
    precision = resolve_precision(cfg.inception_precision, device())
    start = time.perf_counter()
    real = inception_features(
        model, test_u8[test_pick], cfg.inception_batch_size, precision, "inception: test digits"
    )
    rate = len(real) / (time.perf_counter() - start)

    def floor_metrics(test_features: torch.Tensor, train_images: np.ndarray) -> tuple[dict, torch.Tensor]:
        train = inception_features(
            model, train_images, cfg.inception_batch_size, precision, "inception: train digits (floor)"
        )
        return feature_metrics("inception", test_features, train, cfg), train

    (floor, train), _ = real_floor(floor_metrics, real, train_u8, len(real), seed + 1)
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
    return Reference(real.float().numpy(), train.float().numpy(), test_pick, scores, info)


def save_reference(
    path: Path,
    features: np.ndarray,
    test_indices: np.ndarray,
    precision: str = "fp32",
    train_features: np.ndarray | None = None,
) -> None:
    """The reference features file (.npz: `features` of the test digits, `test_indices`, `precision`: fp32
    or bf16, the path that computed them, and `train_features` of the floor's training digits), written
    atomically."""
    train = np.zeros((0, features.shape[1]), np.float32) if train_features is None else train_features
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            features=features,
            test_indices=test_indices,
            precision=np.array(precision),
            train_features=train,
        )


def load_reference(path: Path, cfg: EvaluateConfig, precision: str = "fp32") -> torch.Tensor:
    """The reference stage's test features as float64 (N, 2048); a one-line DataError when the file is
    missing, truncated or corrupt, not such features, holds more than evaluate.inception_n or too few
    (at least 2, and more than evaluate.prdc_nearest_k) of them, or was computed in another precision than
    `precision` (the fakes' features: real and fake sides must come from the same path, or FID measures
    bf16's rounding as well as the samples)."""
    features = _read(path, "features", precision)
    if not max(2, cfg.prdc_nearest_k + 1) <= len(features) <= cfg.inception_n:
        raise DataError(
            f"{path}: {len(features)} reference features, expected evaluate.inception_n = {cfg.inception_n} "
            f"(at least {max(2, cfg.prdc_nearest_k + 1)}; re-run the reference stage with the same params)"
        )
    return features


def load_train_features(path: Path, precision: str) -> torch.Tensor:
    """The reference stage's features of training digits (the floor's) as float64 (N, 2048), for the
    in-training checks that rank by fid_inception; a one-line DataError as load_reference's, and when the
    file holds fewer than 2 of them (a file from before they were kept, or evaluate.inception_n 0)."""
    features = _read(path, "train_features", precision)
    if len(features) < 2:
        raise DataError(
            f"{path}: {len(features)} training-digit features, expected evaluate.inception_n of them (at "
            "least 2) for monitor.score fid_inception (re-run the reference stage)"
        )
    return features


def _read(path: Path, key: str, precision: str) -> torch.Tensor:
    """Array `key` of the reference file as float64, checked: floats (N, 2048), finite, and computed in
    `precision`."""
    try:
        with np.load(path) as npz:
            if key not in npz.files:
                raise DataError(f"{path}: no {key!r} in it (a file from before they were kept? re-run the "
                                "reference stage)")  # fmt: skip
            features = npz[key]
            made_with = str(npz["precision"]) if "precision" in npz.files else "fp32"
    except FileNotFoundError:
        raise DataError(f"{path}: reference features not found (run the reference stage first)") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = first_line(exc)
        raise DataError(f"{path}: not a features file from the reference stage ({reason})") from None
    width = InceptionFeatures.num_features
    if features.ndim != 2 or features.shape[1] != width or not np.issubdtype(features.dtype, np.floating):
        raise DataError(
            f"{path}: {key!r} is {features.dtype} {features.shape}, expected floats (N, {width}) "
            "(run the reference stage again)"
        )
    if not np.isfinite(features).all():
        raise DataError(f"{path}: {key!r} holds NaN or infinite values (run the reference stage again)")
    if made_with != precision:
        raise DataError(
            f"{path}: reference features computed in {made_with}, but the samples' features are {precision} "
            "(evaluate.inception_precision resolves differently on this machine; re-run the reference stage)"
        )
    return torch.from_numpy(features).double()
