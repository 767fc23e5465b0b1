"""Which digits a generator draws, as judged by the classifier's softmax: pure functions of probabilities."""

from __future__ import annotations

import math

import numpy as np
import torch


def _as_probs(probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    probs = torch.as_tensor(probs)
    if probs.dim() != 2:
        raise ValueError(f"expected probabilities of shape (N, n_classes), got shape {tuple(probs.shape)}")
    return probs


def class_histogram(probs: torch.Tensor | np.ndarray, confidence: float) -> list[int]:
    """Per class, how many samples are predicted as it with softmax probability >= `confidence`.

    `probs` is (N, n_classes); the result has n_classes counts and sums to at most N, since less
    confident samples count nowhere.
    """
    probs = _as_probs(probs)
    top, predicted = probs.max(dim=1)
    return torch.bincount(predicted[top >= confidence], minlength=probs.shape[1]).tolist()


def digit_coverage(histogram: list[int], n_samples: int, min_fraction: float) -> int:
    """How many classes hold at least max(1, ceil(min_fraction * n_samples)) of the `n_samples` samples."""
    # Rounded first so that binary round-off cannot raise the threshold: 0.07 * 100 is 7.000000000000001.
    threshold = max(1, math.ceil(round(min_fraction * n_samples, 9)))
    return sum(count >= threshold for count in histogram)


def kl_from_uniform(histogram: list[int]) -> float:
    """KL(p || uniform) in nats of the normalised histogram: 0 when uniform, log(n_classes) in one class.

    Empty classes add 0 (0 log 0 = 0). An all-zero histogram (no sample recognised confidently) gives
    log(n_classes), the maximum: such a generator shows no recognisable digit, so it must not score better
    than one that collapsed to a single digit, and a finite value keeps metric files valid JSON and
    "lower is better" comparisons working. digit_coverage is 0 beside it, which tells the two cases apart.
    """
    counts = np.asarray(histogram, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"expected a non-empty list of class counts, got {histogram!r}")
    if (counts < 0).any():
        raise ValueError(f"class counts must be >= 0, got {histogram!r}")
    n_classes = counts.size
    total = counts.sum()
    if total == 0:
        return math.log(n_classes)
    p = counts[counts > 0] / total
    return float(np.sum(p * np.log(p * n_classes)))


def label_accuracy(probs: torch.Tensor | np.ndarray, requested: torch.Tensor | np.ndarray) -> float:
    """Share in [0, 1] of samples whose most probable class is the label they were generated for."""
    probs = _as_probs(probs)
    requested = torch.as_tensor(requested)
    if len(probs) == 0 or requested.shape != (len(probs),):
        raise ValueError(
            f"expected N >= 1 samples and N requested labels, "
            f"got {len(probs)} samples and labels of shape {tuple(requested.shape)}"
        )
    return (probs.argmax(dim=1) == requested.to(probs.device)).double().mean().item()


def digit_report(
    probs: torch.Tensor | np.ndarray, confidence: float, min_fraction: float
) -> dict[str, float | int | dict[str, int]]:
    """coverage, kl_from_uniform, confident_fraction and class_histogram of classifier `probs` (N, 10)."""
    histogram = class_histogram(probs, confidence)
    n = len(probs)
    return {
        "coverage": digit_coverage(histogram, n, min_fraction),
        "kl_from_uniform": kl_from_uniform(histogram),
        "confident_fraction": sum(histogram) / n if n else 0.0,
        "class_histogram": {str(d): count for d, count in enumerate(histogram)},
    }
