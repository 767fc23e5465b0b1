"""Scoring samples (`evaluate_samples`): the scores, what describes them and the per-digit rows come apart,
as the evaluate stage writes them (DVC metrics, info file, class histogram plot)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from configs import data_config, evaluate_config

from gan_pipeline.data.loading import load_split
from gan_pipeline.data.prepare import prepare
from gan_pipeline.evaluation import evaluate_samples, summary
from gan_pipeline.io import save_weights
from gan_pipeline.models.classifier import DigitClassifier
from gan_pipeline.sampling import save_samples

# Every sample is counted as its most probable digit (confidence 0), so the histogram sums to N; no
# Inception (inception_n 0), so no reference features are read.
CFG = evaluate_config(coverage_confidence=0.0, kid_subset_size=50, kid_subsets=5, inception_n=0)
CLASSIFIER_SCORES = {
    "fid_classifier", "fid_classifier_real_floor", "kid_classifier", "kid_classifier_std",
    "prdc_classifier_precision", "prdc_classifier_recall", "prdc_classifier_density",
    "prdc_classifier_coverage", "coverage", "kl_from_uniform", "confident_fraction",
}  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """The prepared default digits (1,000 test images) and an untrained classifier's weights."""
    folder = tmp_path_factory.mktemp("digits")
    prepare(data_config(), folder / "mnist.h5", folder / "stats.json")
    torch.manual_seed(0)
    save_weights(folder / "classifier.safetensors", DigitClassifier(16), {"feature_dim": 16})
    return folder / "mnist.h5", folder / "classifier.safetensors"


def _evaluate(digits: tuple[Path, Path], tmp_path: Path, conditional: bool):
    data, classifier = digits
    images, labels = load_split(data, "test")  # sorted by digit: every 10th is 10 of each digit
    save_samples(tmp_path / "s.npz", images[::10], labels[::10] if conditional else None)
    return evaluate_samples(data, tmp_path / "s.npz", CFG, 1234, classifier, 1.5, tmp_path / "unread.npz")


def test_conditional_digits_give_scores_only_and_sizes_backends_and_classes_apart(digits, tmp_path):
    result = _evaluate(digits, tmp_path, conditional=True)
    assert set(result.metrics) == CLASSIFIER_SCORES | {"label_accuracy", "fid_classifier_intra_class"}
    assert all(type(v) in (int, float) for v in result.metrics.values()), result.metrics
    assert result.metrics["fid_classifier_real_floor"] == 1.5
    assert result.info["sample_sizes"] == {
        "fid_classifier_n_real": 1000,
        "fid_classifier_n_fake": 100,
        "kid_classifier_subset_size": 50,
    }
    assert result.info["prdc_nearest_k"] == CFG.prdc_nearest_k
    assert list(result.info["feature_backend"]) == ["classifier"]
    assert [row["digit"] for row in result.classes] == list(range(10))
    assert sum(row["count"] for row in result.classes) == 100
    per_class = [row["fid_classifier"] for row in result.classes]
    assert all(fid > 0 for fid in per_class)
    assert result.metrics["fid_classifier_intra_class"] == pytest.approx(sum(per_class) / 10)
    assert summary("cgan", result, CFG.inception_n)[1].endswith(str([row["count"] for row in result.classes]))


def test_unconditional_digits_have_neither_label_accuracy_nor_per_class_fid(digits, tmp_path):
    result = _evaluate(digits, tmp_path, conditional=False)
    assert set(result.metrics) == CLASSIFIER_SCORES
    assert [set(row) for row in result.classes] == [{"digit", "count"}] * 10
