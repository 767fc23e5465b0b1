"""The reference stage's Inception features file: read back as it was written, and anything else (missing,
truncated, corrupt, of other params) is one line naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from configs import evaluate_config

from gan_pipeline.errors import DataError
from gan_pipeline.metrics.reference import load_reference, load_train_features, save_reference

CFG = evaluate_config(inception_n=10, prdc_nearest_k=3)


def _features(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 2048)).astype(np.float32)


def test_load_reference_reads_back_what_save_reference_wrote(tmp_path):
    features = _features()
    save_reference(tmp_path / "r.npz", features, np.arange(10))
    real = load_reference(tmp_path / "r.npz", CFG)
    assert real.dtype == torch.float64 and torch.equal(real, torch.from_numpy(features).double())


def _truncated(path):
    save_reference(path, _features(), np.arange(10))
    path.write_bytes(path.read_bytes()[:5000])


def _bit_flipped(path):
    save_reference(path, _features(), np.arange(10))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "reference features not found (run the reference stage first)"),
        (_truncated, "not a features file from the reference stage (File is not a zip file)"),
        (_bit_flipped, "not a features file from the reference stage (Bad CRC-32 for file 'features.npy')"),
        (
            lambda p: save_reference(p, _features()[:, :64], np.arange(10)),
            "'features' is float32 (10, 64), expected floats (N, 2048) (run the reference stage again)",
        ),
        (
            lambda p: save_reference(p, np.full((10, 2048), np.nan, np.float32), np.arange(10)),
            "'features' holds NaN or infinite values (run the reference stage again)",
        ),
        (
            lambda p: save_reference(p, _features(3), np.arange(3)),
            "3 reference features, expected evaluate.inception_n = 10 (at least 4; re-run the reference "
            "stage with the same params)",
        ),
        (
            lambda p: save_reference(p, _features(12), np.arange(12)),
            "12 reference features, expected evaluate.inception_n = 10 (at least 4; re-run the reference "
            "stage with the same params)",
        ),
    ],
)
def test_a_bad_reference_file_is_one_line_naming_it(tmp_path, make, message):
    path = tmp_path / "reference.npz"
    make(path)
    with pytest.raises(DataError) as err:
        load_reference(path, CFG)
    assert str(err.value) == f"{path}: {message}"


def test_reference_features_of_another_precision_than_the_samples_are_refused(tmp_path):
    path = tmp_path / "reference.npz"
    save_reference(path, _features(), np.arange(10), precision="bf16")
    assert torch.equal(load_reference(path, CFG, "bf16"), torch.from_numpy(_features()).double())
    with pytest.raises(DataError) as err:
        load_reference(path, CFG, "fp32")
    assert str(err.value) == (
        f"{path}: reference features computed in bf16, but the samples' features are fp32 "
        "(evaluate.inception_precision resolves differently on this machine; re-run the reference stage)"
    )


def test_the_floors_training_digit_features_are_read_back_for_the_in_training_checks(tmp_path):
    path, train = tmp_path / "r.npz", _features(7) + 1
    save_reference(path, _features(), np.arange(10), "bf16", train)
    assert torch.equal(load_train_features(path, "bf16"), torch.from_numpy(train).double())
    with pytest.raises(DataError, match="computed in bf16, but the samples' features are fp32"):
        load_train_features(path, "fp32")


def test_a_reference_without_training_digit_features_is_one_line_saying_to_rerun_the_stage(tmp_path):
    old, empty = tmp_path / "old.npz", tmp_path / "empty.npz"
    np.savez(old, features=_features(), test_indices=np.arange(10), precision=np.array("fp32"))
    save_reference(empty, _features(), np.arange(10))  # no train_features given: none kept
    with pytest.raises(DataError) as err:
        load_train_features(old, "fp32")
    assert str(err.value) == (
        f"{old}: no 'train_features' in it (a file from before they were kept? re-run the reference stage)"
    )
    with pytest.raises(DataError) as err:
        load_train_features(empty, "fp32")
    assert str(err.value) == (
        f"{empty}: 0 training-digit features, expected evaluate.inception_n of them (at least 2) for "
        "monitor.score fid_inception (re-run the reference stage)"
    )
