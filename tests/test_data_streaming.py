"""Streaming face batches from the prepared HDF5 file: shapes, coverage, chunk-friendly seeded shuffling."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
import torch
from hostile_files import OUTSIDE, add_huge, add_outside

from gan_pipeline.data.loading import TensorBatches, to_float, to_uint8
from gan_pipeline.data.streaming import H5Batches, shuffled_order, train_batches, train_size
from gan_pipeline.errors import DataError


@pytest.fixture
def face_file(tmp_path):
    """50 train + 10 test 8x8 faces, chunks of 4 rows; pixel [0, 0, 0] of row i holds i (the row number)."""
    images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(60)
    path = tmp_path / "faces.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(4, 8, 8, 3))
        f.attrs.update(n_train=50, n_test=10, kind="faces")
    return path, images


def _rows(x: torch.Tensor) -> list[int]:
    return to_uint8(x, (-1.0, 1.0))[:, 0, 0, 0].tolist()


def test_batches_are_full_float_nchw_in_the_value_range_with_zero_labels(face_file):
    path, images = face_file
    batches = H5Batches(path, (-1.0, 1.0), batch_size=8, buffer_images=8)
    seen = list(batches.epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == len(seen) == 6  # 50 // 8; the partial batch is dropped
    for x, labels in seen:
        assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        assert torch.equal(labels, torch.zeros(8, dtype=torch.long))
        assert np.array_equal(to_uint8(x, (-1.0, 1.0)).numpy(), images[_rows(x)])
    rows = [r for x, _ in seen for r in _rows(x)]
    assert len(set(rows)) == 48 and max(rows) < 50  # each train row at most once, no test rows


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_batches_hold_the_values_to_float_gives(face_file, value_range):
    path, images = face_file
    (x, _), *_ = H5Batches(path, value_range, batch_size=50).epoch(torch.Generator().manual_seed(0))
    rows = _rows(x if value_range[0] < 0 else x * 2 - 1)
    assert torch.equal(x, to_float(images[rows], value_range))


def test_the_order_is_fixed_by_the_rng_and_drawn_at_the_first_batch(face_file):
    batches = H5Batches(face_file[0], (0.0, 1.0), batch_size=5)
    rng = torch.Generator().manual_seed(3)
    epoch = batches.epoch(rng)
    state = rng.get_state()
    assert torch.equal(rng.get_state(), state)  # nothing drawn before the first batch is asked for
    first = [_rows(x * 2 - 1) for x, _ in epoch]
    assert not torch.equal(rng.get_state(), state)
    again = [_rows(x * 2 - 1) for x, _ in batches.epoch(torch.Generator().manual_seed(3))]
    other = [_rows(x * 2 - 1) for x, _ in batches.epoch(torch.Generator().manual_seed(4))]
    assert first == again and first != other


def test_shuffled_order_keeps_blocks_together_within_a_buffer():
    """Rows 0..49 in blocks of 4 (the last has 2): each buffer of 3 blocks' rows holds whole blocks only."""
    order = shuffled_order(50, block=4, buffer_blocks=3, rng=torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    start = 0
    while start < 50:  # each next buffer: the shortest run that holds 3 whole blocks (or the rest)
        for end in range(start + 1, 51):
            blocks = set((order[start:end] // 4).tolist())
            whole = {r for b in blocks for r in range(4 * b, min(4 * b + 4, 50))}
            if set(order[start:end].tolist()) == whole and (len(blocks) == 3 or end == 50):
                break
        assert len(blocks) <= 3 and set(order[start:end].tolist()) == whole
        start = end


def test_stopping_early_ends_the_reader_thread(face_file):
    before = threading.active_count()
    epoch = H5Batches(face_file[0], (0.0, 1.0), batch_size=2, prefetch=1).epoch(torch.Generator())
    next(epoch)
    epoch.close()
    assert threading.active_count() == before


def test_a_read_error_reaches_the_consumer(face_file):
    path, _ = face_file
    batches = H5Batches(path, (0.0, 1.0), batch_size=5)
    path.write_bytes(b"gone")
    with pytest.raises(OSError):
        list(batches.epoch(torch.Generator()))


@pytest.mark.parametrize("prefetch", [1, 8])
def test_prefetching_changes_neither_the_order_nor_the_content(face_file, prefetch):
    """The reader thread runs `prefetch` batches ahead; what arrives is what a synchronous read gives: the
    rows of shuffled_order (drawn the same way from the same seed), in that order, as to_float values."""
    path, images = face_file
    batches = H5Batches(path, (-1.0, 1.0), batch_size=8, buffer_images=8, prefetch=prefetch)
    got = [x for x, _ in batches.epoch(torch.Generator().manual_seed(7))]
    order = shuffled_order(50, 4, batches.buffer_blocks, torch.Generator().manual_seed(7))[:48]
    expected = to_float(images[order.numpy()], (-1.0, 1.0))
    assert torch.equal(torch.cat(got), expected)


def test_an_error_in_the_reader_mid_epoch_reaches_the_consumer_after_the_good_batches(face_file, monkeypatch):
    from gan_pipeline.data import streaming

    convert, calls = streaming._nchw_float, []

    def failing(batch, value_range):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("bad block")
        return convert(batch, value_range)

    monkeypatch.setattr(streaming, "_nchw_float", failing)
    before = threading.active_count()
    epoch = H5Batches(face_file[0], (0.0, 1.0), batch_size=5, prefetch=2).epoch(torch.Generator())
    assert len([next(epoch), next(epoch)]) == 2
    with pytest.raises(ValueError, match="bad block"):
        next(epoch)
    assert threading.active_count() == before  # the reader thread has ended


def test_train_batches_streams_faces_and_holds_mnist_in_memory(face_file, tmp_path):
    from configs import data_config

    from gan_pipeline.data import prepare

    assert isinstance(train_batches(face_file[0], (0.0, 1.0), 4, torch.device("cpu")), H5Batches)
    assert train_size(face_file[0]) == 50
    prepare(data_config(), tmp_path / "mnist.h5", tmp_path / "stats.json")
    mnist = train_batches(tmp_path / "mnist.h5", (-1.0, 1.0), 64, torch.device("cpu"))
    assert isinstance(mnist, TensorBatches) and train_size(tmp_path / "mnist.h5") == 4000


def test_a_file_that_is_not_a_face_file_is_named(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(DataError, match="x.h5: not a prepared face file"):
        H5Batches(tmp_path / "x.h5", (0.0, 1.0), 1)
    with pytest.raises(DataError, match="y.h5: prepared data not found"):
        H5Batches(tmp_path / "y.h5", (0.0, 1.0), 1)


@pytest.mark.parametrize("kind", sorted(OUTSIDE))
def test_a_face_file_reading_other_files_is_refused_before_streaming(face_file, tmp_path, kind):
    path, images = face_file
    with h5py.File(path, "a") as f:
        del f["images"]
        add_outside(f, "images", kind, tmp_path, images.shape)
    with pytest.raises(DataError, match=rf"faces.h5: /images {OUTSIDE[kind]} .*\(refused"):
        H5Batches(path, (0.0, 1.0), 5)


def _huge_images(f):
    add_huge(f, "images", (60, 40000, 40000, 3))


def _huge_chunks(f):  # 6 rows of 2048x2048 RGB: 72 MiB chunks
    f.create_dataset("images", shape=(60, 2048, 2048, 3), dtype="u1", chunks=(6, 2048, 2048, 3))


@pytest.mark.parametrize(
    ("write", "problem"),
    [
        (_huge_images, r"'images' has shape \(60, 40000, 40000, 3\): images over the 16,777,216-pixel cap"),
        (_huge_chunks, r"/images has chunks of \(6, 2048, 2048, 3\), 72.0 MiB, over the 64.0 MiB cap"),
    ],
)
def test_a_face_file_declaring_huge_images_or_chunks_is_refused_before_reading(face_file, write, problem):
    path, _ = face_file
    with h5py.File(path, "a") as f:
        del f["images"]
        write(f)
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=rf"faces.h5: {problem}"):
        H5Batches(path, (0.0, 1.0), 5)


def test_a_face_file_without_its_split_attributes_is_named(face_file):
    path, _ = face_file
    with h5py.File(path, "a") as f:
        del f.attrs["n_test"]
    with pytest.raises(DataError, match=r"faces.h5: attribute n_test is None, expected an int >= 0$"):
        H5Batches(path, (0.0, 1.0), 5)
