import re

import h5py
import numpy as np
import pytest
import torch
from configs import data_config
from hostile_files import OUTSIDE, add_huge, add_outside

from gan_pipeline.data import load_split, prepare, to_float, to_uint8
from gan_pipeline.errors import DataError

# --- load_split ------------------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path, real_digits, write_csv):
    """A prepared file of the 40 real digits: 30 train rows, then 10 test rows."""
    csv = write_csv(tmp_path / "digits.csv", real_digits.images, real_digits.labels)
    path = tmp_path / "digits.h5"
    prepare(data_config(source="csv", path=str(csv), test_fraction=0.25), path, tmp_path / "stats.json")
    return path


def test_load_split_returns_each_split_as_prepare_wrote_it(prepared, real_digits):
    with h5py.File(prepared, "r") as f:
        source_index = f["source_index"][:]
    train_images, train_labels = load_split(prepared, "train")
    test_images, test_labels = load_split(prepared, "test")
    assert train_images.dtype == np.uint8 and train_images.shape == (30, 28, 28)
    assert train_labels.dtype == np.uint8 and train_labels.shape == (30,)
    assert test_images.shape == (10, 28, 28) and test_labels.shape == (10,)
    np.testing.assert_array_equal(train_images, real_digits.images[source_index[:30]])
    np.testing.assert_array_equal(train_labels, real_digits.labels[source_index[:30]])
    np.testing.assert_array_equal(test_images, real_digits.images[source_index[30:]])
    np.testing.assert_array_equal(test_labels, real_digits.labels[source_index[30:]])


def test_load_split_names_a_missing_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'digits.h5'}: prepared data not found")):
        load_split(tmp_path / "digits.h5", "train")


def test_load_split_rejects_a_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "digits.h5"
    path.write_text("not hdf5")
    with pytest.raises(DataError, match=re.escape(f"{path}: not an HDF5 file")):
        load_split(path, "test")


def test_load_split_names_a_truncated_file(prepared):
    prepared.write_bytes(prepared.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        load_split(prepared, "train")
    assert str(err.value).startswith(f"{prepared}: unreadable HDF5 file (")
    assert "truncated file" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", sorted(OUTSIDE))
def test_a_prepared_file_reading_other_files_is_refused(prepared, tmp_path, kind):
    """Its labels replaced by a dataset whose bytes come from elsewhere: refused before any is read."""
    with h5py.File(prepared, "a") as f:
        n = len(f["labels"])
        del f["labels"]
        add_outside(f, "labels", kind, tmp_path, (n,))
    with pytest.raises(DataError, match=rf"digits.h5: /labels {OUTSIDE[kind]} .*\(refused: only data stored"):
        load_split(prepared, "train")


def test_a_prepared_file_declaring_more_than_the_cap_is_refused_before_reading(prepared):
    with h5py.File(prepared, "a") as f:
        del f["images"], f["labels"]
        add_huge(f, "images", (2_000_000, 28, 28, 1))  # 1.5 GiB declared, a few KB stored
    message = (
        r"digits.h5: /images declares shape \(2000000, 28, 28, 1\) uint8, 1.5 GiB, over the 1.0 GiB cap for "
        r"the prepared digits \(read whole into memory\)$"
    )
    with pytest.raises(DataError, match=message):
        load_split(prepared, "train")


def _break(path, edit):
    with h5py.File(path, "a") as f:
        edit(f)


def _replace(name, data):
    def edit(f):
        del f[name]
        f.create_dataset(name, data=data)

    return edit


def _set_attr(name, value):
    def edit(f):
        if value is None:
            del f.attrs[name]
        else:
            f.attrs[name] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda f: f.__delitem__("labels"), "no 'labels' dataset"),
        (
            _replace("images", np.zeros((40, 28, 28), np.float32)),
            "'images' has dtype float32, expected uint8",
        ),
        (_replace("labels", np.zeros(40, np.int64)), "'labels' has dtype int64, expected uint8"),
        (
            _replace("images", np.zeros((40, 28, 27), np.uint8)),
            "'images' has shape (40, 28, 27), expected (N, 28, 28)",
        ),
        (
            _replace("labels", np.zeros(39, np.uint8)),
            "'labels' has shape (39,), expected (40,) like 'images'",
        ),
        (_set_attr("n_test", 11), "n_train 30 + n_test 11 != 40 images"),
        (_set_attr("n_train", None), "attribute n_train is None, expected an int >= 0"),
        (_set_attr("n_train", "30"), "attribute n_train is '30', expected an int >= 0"),
    ],
)
def test_load_split_names_the_file_and_what_is_wrong(prepared, edit, problem):
    _break(prepared, edit)
    with pytest.raises(DataError, match=re.escape(f"{prepared}: {problem}")):
        load_split(prepared, "train")


# --- to_float / to_uint8 ---------------------------------------------------------------------------------


def test_to_float_maps_0_255_linearly_onto_the_value_range():
    pixels = np.array([[[0, 51, 255]]], dtype=np.uint8)  # (1, 1, 3)
    tanh = to_float(pixels, (-1, 1))
    sigmoid = to_float(torch.from_numpy(pixels), (0.0, 1.0))
    assert tanh.dtype == torch.float32 and tanh.shape == (1, 1, 1, 3)
    assert tanh.flatten().tolist() == pytest.approx([-1.0, -0.6, 1.0], abs=1e-6)
    assert sigmoid.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0], abs=1e-6)


def test_to_float_adds_the_channel_axis_to_mnist_images(real_digits):
    assert to_float(real_digits.images, (-1, 1)).shape == (40, 1, 28, 28)


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_to_uint8_inverts_to_float_for_every_pixel_value(value_range):
    every_value = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    back = to_uint8(to_float(every_value, value_range), value_range)
    assert back.dtype == torch.uint8 and back.shape == (1, 16, 16)
    assert torch.equal(back, every_value)


def test_rgb_images_convert_between_nhwc_uint8_and_nchw_float():
    pixels = torch.randint(0, 256, (2, 5, 4, 3), dtype=torch.uint8)
    images = to_float(pixels, (0.0, 1.0))
    assert images.shape == (2, 3, 5, 4)
    assert images[1, 2, 3, 1].item() == pytest.approx(pixels[1, 3, 1, 2].item() / 255)
    assert torch.equal(to_uint8(images, (0.0, 1.0)), pixels)


def test_to_uint8_rounds_to_the_nearest_value_and_clamps():
    step = 2 / 255  # one pixel level in (-1, 1)
    images = torch.tensor([-1 + 100.4 * step, -1 + 100.6 * step, -1.5, 1.5]).reshape(1, 1, 1, 4)
    assert to_uint8(images, (-1, 1)).flatten().tolist() == [100, 101, 0, 255]


def test_to_uint8_detaches_from_the_graph():
    images = torch.zeros(2, 1, 28, 28, requires_grad=True)
    assert not to_uint8(images, (0, 1)).requires_grad


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: to_float(np.zeros((2, 1, 28, 28), np.uint8), (-1, 1)), r"expected uint8 images \(n, H, W\)"),
        (lambda: to_float(np.zeros((2, 28, 28), np.float32), (-1, 1)), r"expected uint8 images \(n, H, W\)"),
        (lambda: to_uint8(torch.zeros(2, 28, 28), (-1, 1)), r"expected images \(n, 1, H, W\)"),
        (lambda: to_float(np.zeros((2, 28, 28), np.uint8), (1, -1)), "high > low"),
    ],
)
def test_conversions_reject_wrong_shapes_dtypes_and_ranges(call, match):
    with pytest.raises(ValueError, match=match):
        call()
