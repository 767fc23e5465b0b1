import math

import numpy as np
import pytest
import torch

from gan_pipeline.metrics.coverage import class_histogram, digit_coverage, kl_from_uniform, label_accuracy


def rows(*pairs: tuple[int, float]) -> torch.Tensor:
    """Softmax rows: probability p on class k, the rest spread evenly over the other nine."""
    probs = torch.empty(len(pairs), 10, dtype=torch.float64)
    for i, (k, p) in enumerate(pairs):
        probs[i] = (1 - p) / 9
        probs[i, k] = p
    return probs


def test_class_histogram_counts_confident_samples_per_predicted_class():
    probs = rows((2, 0.95), (2, 0.9), (7, 0.99), (7, 0.5), (0, 0.2))

    assert class_histogram(probs, confidence=0.9) == [0, 0, 2, 0, 0, 0, 0, 1, 0, 0]


def test_class_histogram_counts_a_probability_equal_to_the_confidence():
    probs = rows((4, 0.75), (4, 0.5), (5, 0.7499))

    assert class_histogram(probs, confidence=0.75) == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert class_histogram(probs, confidence=0.5) == [0, 0, 0, 0, 2, 1, 0, 0, 0, 0]


def test_class_histogram_with_zero_confidence_counts_every_sample_and_takes_numpy():
    probs = rows((1, 0.3), (1, 0.6), (9, 0.2)).numpy()

    assert class_histogram(probs, confidence=0.0) == [0, 2, 0, 0, 0, 0, 0, 0, 0, 1]


def test_digit_coverage_counts_classes_reaching_the_fraction_of_all_samples():
    histogram = [20, 19, 21, 0, 0, 0, 0, 0, 0, 100]

    # 1% of 2,000 samples is 20: a class with exactly 20 is covered, one with 19 is not.
    assert digit_coverage(histogram, n_samples=2000, min_fraction=0.01) == 3


def test_digit_coverage_rounds_a_fractional_threshold_up():
    # 1% of 150 is 1.5, so a class needs 2 samples.
    assert digit_coverage([2, 1, 0, 0, 0, 0, 0, 0, 0, 0], n_samples=150, min_fraction=0.01) == 1


def test_digit_coverage_threshold_ignores_float_round_off():
    # 0.07 * 100 is 7.000000000000001 in floating point; the threshold is still 7.
    assert digit_coverage([7, 6, 0, 0, 0, 0, 0, 0, 0, 0], n_samples=100, min_fraction=0.07) == 1


def test_digit_coverage_needs_at_least_one_sample_per_class():
    # 1% of 10 samples rounds up to 1, and an empty class never counts.
    assert digit_coverage([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], n_samples=10, min_fraction=0.01) == 1
    assert digit_coverage([0] * 10, n_samples=0, min_fraction=0.01) == 0


def test_kl_from_uniform_is_zero_for_a_uniform_histogram():
    assert kl_from_uniform([5] * 10) == pytest.approx(0.0, abs=1e-12)


def test_kl_from_uniform_is_log_ten_when_every_sample_is_one_digit():
    assert kl_from_uniform([0, 0, 0, 12, 0, 0, 0, 0, 0, 0]) == pytest.approx(math.log(10))


def test_kl_from_uniform_on_hand_computed_histograms():
    # Two of ten classes, equally: 2 * 0.5 * log(0.5 * 10) = log 5.
    assert kl_from_uniform([4, 4, 0, 0, 0, 0, 0, 0, 0, 0]) == pytest.approx(math.log(5))
    # Two classes, p = (3/4, 1/4) against (1/2, 1/2).
    assert kl_from_uniform([3, 1]) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))


def test_kl_from_uniform_of_an_all_zero_histogram_is_the_maximum_log_ten():
    assert kl_from_uniform([0] * 10) == pytest.approx(math.log(10))


def test_kl_from_uniform_rejects_negative_or_missing_counts():
    with pytest.raises(ValueError, match=">= 0"):
        kl_from_uniform([3, -1, 0, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="non-empty"):
        kl_from_uniform([])


def test_label_accuracy_is_the_share_of_samples_showing_their_requested_digit():
    probs = rows((0, 0.9), (1, 0.3), (2, 0.5), (3, 0.99))

    assert label_accuracy(probs, torch.tensor([0, 1, 2, 0])) == pytest.approx(0.75)
    assert label_accuracy(probs.numpy(), np.array([0, 1, 2, 3])) == pytest.approx(1.0)


def test_label_accuracy_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="requested labels"):
        label_accuracy(rows((0, 0.9), (1, 0.9)), torch.tensor([0, 1, 2]))
