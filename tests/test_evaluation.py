"""Scoring samples (`evaluate_samples`): the scores, what describes them and the per-digit rows come apart,
as the evaluate stage writes them (DVC metrics, info file, class histogram plot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from configs import data_config, evaluate_config

from gan_pipeline.data.loading import load_split
from gan_pipeline.data.prepare import prepare
from gan_pipeline.evaluation import RANK_NOTE, evaluate_samples, rank_note, summary
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


def _face_file(folder: Path, arrays, write_face_jpegs) -> Path:
    """`arrays` written as JPEGs and prepared at 64x64 (seeded split, half in test) into folder/faces.h5."""
    from configs import face_data_config

    from gan_pipeline.data.faces import prepare_faces

    write_face_jpegs(folder / "raw", arrays)
    cfg = face_data_config(source="jpeg_folder", path=str(folder / "raw"), split="seeded",
                           partition_file=None, test_fraction=0.5)  # fmt: skip
    prepare_faces(cfg, folder / "faces.h5", folder / "faces.json")
    return folder / "faces.h5"


def test_faces_are_scored_against_the_reference_set_given_which_the_info_names(
    tmp_path, face_arrays, write_face_jpegs
):
    """Samples scored against another face dataset's test split (the reference set: references.<exp>):
    the real side's channel statistics are that file's test faces', and the info says which file, how many
    test faces it has and how many of them were scored."""
    from gan_pipeline.data.streaming import read_faces

    own = _face_file(tmp_path / "own", face_arrays[:6], write_face_jpegs)
    reference = _face_file(tmp_path / "ref", 255 - face_arrays[4:12], write_face_jpegs)  # other faces
    samples = np.concatenate([read_faces(own, "train"), read_faces(own, "test")])
    save_samples(tmp_path / "s.npz", samples, None)
    result = evaluate_samples(reference, tmp_path / "s.npz", evaluate_config(inception_n=0), 1234)
    assert result.info["reference"] == {
        "data": str(reference), "split": "test", "n_test": 4, "n_scored_inception": 0, "n_scored_channel": 4,
    }  # fmt: skip
    real = read_faces(reference, "test") / 255  # all 4 of its test faces: fewer than the 6 samples
    assert result.metrics["channel_mean_real_r"] == pytest.approx(real[..., 0].mean())
    assert result.metrics["channel_mean_fake_r"] == pytest.approx((samples[..., 0] / 255).mean())
    assert "fid_inception_note" not in result.info  # no FID without Inception
    lines = summary("dcgan64", result, 0)
    assert lines[-1].endswith(f"(6 samples, 4 test faces of {reference})")


def test_an_fid_on_2048_images_or_fewer_on_a_side_is_said_to_be_rank_deficient():
    """The covariance of n images has rank at most n - 1: full rank 2048 needs 2049 images on each side."""
    assert rank_note(2049, 2049) is None and rank_note(10_000, 50_000) is None
    assert rank_note(2048, 10_000) == rank_note(10_000, 2048) == rank_note(5, 5) == RANK_NOTE
    assert RANK_NOTE.startswith("FID on fewer than 2,049 images is rank-deficient (the 2048x2048 covariance")
