"""Face samples scored against real faces: the per-channel mean and std of samples vs real, a sanity line
beside the standard Inception metrics (`fid_inception`, `kid_inception`, `prdc_inception_*`, computed by the
evaluate_faces stage with gan_pipeline.metrics.inception)."""

from __future__ import annotations

import numpy as np

CHANNELS = ("r", "g", "b")


def channel_stats(images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every pixel of uint8 (n, H, W, 3) images, in [0, 1] units."""
    if images_u8.dtype != np.uint8 or images_u8.ndim != 4 or images_u8.shape[3] != 3:
        raise ValueError(f"expected uint8 (n, H, W, 3) images, got {images_u8.dtype} {images_u8.shape}")
    pixels = images_u8.reshape(-1, 3).astype(np.float64) / 255
    return pixels.mean(axis=0), pixels.std(axis=0)


def channel_report(real_u8: np.ndarray, fake_u8: np.ndarray) -> dict:
    """Per-channel mean/std of uint8 (n, H, W, 3) samples and real images of the same size, their largest
    differences, and the two counts (channel_n_fake, channel_n_real)."""
    if real_u8.shape[1:] != fake_u8.shape[1:]:
        raise ValueError(f"real images are {real_u8.shape[1:]} but samples are {fake_u8.shape[1:]}")
    metrics: dict = {}
    real_mean, real_std = channel_stats(real_u8)
    fake_mean, fake_std = channel_stats(fake_u8)
    for name, values in (
        ("channel_mean_real", real_mean),
        ("channel_mean_fake", fake_mean),
        ("channel_std_real", real_std),
        ("channel_std_fake", fake_std),
    ):
        metrics.update({f"{name}_{c}": float(v) for c, v in zip(CHANNELS, values, strict=True)})
    metrics["channel_mean_max_abs_diff"] = float(np.abs(fake_mean - real_mean).max())
    metrics["channel_std_max_abs_diff"] = float(np.abs(fake_std - real_std).max())
    metrics["channel_n_fake"], metrics["channel_n_real"] = len(fake_u8), len(real_u8)
    return metrics
