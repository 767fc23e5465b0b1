"""The face metrics' per-channel sanity line."""

from __future__ import annotations

import numpy as np
import pytest

from gan_pipeline.metrics.faces import channel_report, channel_stats


def test_channel_stats_are_per_channel_in_unit_range():
    images = np.zeros((2, 1, 2, 3), np.uint8)
    images[..., 0] = 255  # red all on
    images[0, 0, 0, 1] = 255  # green on in 1 pixel of 4
    mean, std = channel_stats(images)
    assert mean == pytest.approx([1.0, 0.25, 0.0])
    assert std == pytest.approx([0.0, np.sqrt(0.25 * 0.75), 0.0])


def test_channel_report_compares_samples_with_real_per_channel():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    fake = real // 2
    metrics = channel_report(real, fake)
    assert metrics["channel_mean_fake_g"] == pytest.approx((fake[..., 1] / 255).mean())
    assert metrics["channel_mean_max_abs_diff"] == pytest.approx(
        np.abs((real / 255).mean(axis=(0, 1, 2)) - (fake / 255).mean(axis=(0, 1, 2))).max()
    )
    assert (metrics["channel_n_fake"], metrics["channel_n_real"]) == (10, 10)
    with pytest.raises(ValueError, match="real images are"):
        channel_report(real, fake[:, :2])
