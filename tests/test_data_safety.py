"""check_hdf5 and the size caps: HDF5 objects that read outside the file, or declare more than memory holds,
are refused from the metadata alone."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hostile_files import OUTSIDE, add_huge, add_outside

from gan_pipeline.data.safety import (
    MAX_CHUNK_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_MEMBER_BYTES,
    check_hdf5,
    zip_member_problem,
)
from gan_pipeline.errors import DataError


@pytest.mark.parametrize("kind", sorted(OUTSIDE))
def test_an_object_reading_outside_the_file_is_refused_naming_it(tmp_path, kind):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["fine"] = np.zeros((2, 3), np.uint8)
        add_outside(f, "group/data", kind, tmp_path, (4, 4))
    with h5py.File(path, "r") as f, pytest.raises(DataError) as caught:
        check_hdf5(path, f, None)
    assert str(caught.value).startswith(f"{path}: /group/data {OUTSIDE[kind]}")
    assert str(caught.value).endswith("(refused: only data stored in the file itself is read)")


def test_declared_sizes_and_chunks_over_the_caps_are_refused_before_reading(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        add_huge(f, "images", (40000, 40000, 3))
    assert path.stat().st_size < 100_000
    with h5py.File(path, "r") as f:
        with pytest.raises(
            DataError, match=r"/images declares shape \(40000, 40000, 3\) uint8, 4.5 GiB, over"
        ):
            check_hdf5(path, f, 1 << 30, "a test")
        check_hdf5(path, f, None)  # no size cap; its chunks (1, 1, 3) are small
    with h5py.File(path, "w") as f:
        f.create_dataset("images", shape=(100, 1 << 20), dtype="u1", chunks=(65, 1 << 20))
    with (
        h5py.File(path, "r") as f,
        pytest.raises(DataError, match=r"chunks of \(65, 1048576\), 65.0 MiB, over"),
    ):
        check_hdf5(path, f, None)
    assert 65 << 20 > MAX_CHUNK_BYTES


def test_a_plain_file_with_a_hard_link_cycle_passes(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("a")
        group["self"] = group  # a hard link: the same group, not data from elsewhere
        group["x"] = np.arange(6, dtype=np.uint8)
    with h5py.File(path, "r") as f:
        check_hdf5(path, f, 6)
        with pytest.raises(DataError, match="/a/x declares shape"):
            check_hdf5(path, f, 5)


def test_zip_member_caps_on_declared_size_and_compression_ratio():
    assert zip_member_problem(16_000, 15_000) is None  # a CelebA JPEG
    assert zip_member_problem(MAX_MEMBER_BYTES, MAX_MEMBER_BYTES) is None
    assert "over the 64.0 MiB cap" in zip_member_problem(1 << 30, 1 << 30)
    assert zip_member_problem(MAX_COMPRESSION_RATIO * 1000, 1000) is None
    assert "ratio over the 100:1 cap" in zip_member_problem(MAX_COMPRESSION_RATIO * 1000 + 1, 1000)
