"""Fixed-seed samples and the grids people look at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gan_pipeline.errors import DataError
from gan_pipeline.io import save_weights
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.sampling import (
    balanced_labels,
    generate,
    grid_image,
    load_generator,
    load_samples,
    save_grid,
    save_samples,
)


def test_balanced_labels_cycle_through_the_digits():
    assert balanced_labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_generate_is_fixed_by_the_seed_and_batches_move_at_most_a_rounding():
    torch.manual_seed(0)
    generator, _ = build_gan("cgan", 16)
    spec = GAN_MODELS["cgan"]
    a, labels = generate(generator, spec, 16, 25, seed=7)
    again, _ = generate(generator, spec, 16, 25, seed=7)
    b, _ = generate(generator, spec, 16, 25, seed=7, batch_size=4)
    c, _ = generate(generator, spec, 16, 25, seed=8)
    assert a.shape == (25, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, again) and not np.array_equal(a, c)
    # Another batch size is another matrix shape: on some CPUs (an Intel Xeon with AMX: 1 pixel of 19,600)
    # its kernel sums in another order, and a value on a rounding edge moves by one level. The sample stage
    # always uses the same batch size, so its samples are bit-reproducible.
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert labels.tolist() == balanced_labels(25).tolist()


def test_unconditional_generate_returns_no_labels():
    generator, _ = build_gan("mlp_gan", 16)
    images, labels = generate(generator, GAN_MODELS["mlp_gan"], 16, 3, seed=0)
    assert images.shape == (3, 28, 28) and labels is None


def test_grid_places_image_i_at_row_i_div_cols():
    images = np.zeros((6, 4, 4), dtype=np.uint8)
    images[4] = 200  # row 1, column 1 of a 2x3 grid
    picture = np.asarray(grid_image(images, rows=2, pad=1, scale=1))
    assert picture.shape == (2 * 5 + 1, 3 * 5 + 1)
    assert (picture[6:10, 6:10] == 200).all()
    assert (picture[1:5, 1:5] == 0).all()
    assert (picture[0] == 255).all()  # padding


def test_save_grid_and_samples(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    save_grid(images, 10, tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == ((10 * 30 + 2) * 2, (10 * 30 + 2) * 2)
    save_samples(tmp_path / "s.npz", images, np.arange(100) % 10)
    with np.load(tmp_path / "s.npz") as npz:
        assert np.array_equal(npz["images"], images)
        assert npz["labels"].dtype == np.int64


def test_load_samples_reads_back_what_save_samples_wrote(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    save_samples(tmp_path / "c.npz", images, np.arange(12) % 10)
    loaded, labels = load_samples(tmp_path / "c.npz")
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, images)
    assert labels.dtype == np.int64 and labels.tolist() == (np.arange(12) % 10).tolist()
    save_samples(tmp_path / "u.npz", images[:, :28, :28, 0], None)
    loaded, labels = load_samples(tmp_path / "u.npz")
    assert np.array_equal(loaded, images[:, :28, :28, 0]) and labels is None


@pytest.mark.parametrize("content", ["text", "no images"])
def test_load_samples_of_anything_else_is_a_one_line_data_error(tmp_path, content):
    path = tmp_path / "s.npz"
    if content == "text":
        path.write_text("not\nan npz\n")
    elif content == "no images":
        np.savez(path, labels=np.arange(3))
    with pytest.raises(DataError, match="not a samples file from the sample stage") as info:
        load_samples(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_load_generator_rebuilds_the_model_from_its_config(tmp_path):
    generator, _ = build_gan("cgan", 12, label_embedding="embedding")
    config = {"model": {"name": "cgan", "latent_dim": 12, "label_embedding": "embedding"}}
    save_weights(tmp_path / "g.safetensors", generator, config)
    loaded, spec, model = load_generator(tmp_path / "g.safetensors")
    assert spec.name == "cgan" and model["latent_dim"] == 12
    z, labels = torch.randn(2, 12), torch.tensor([1, 2])
    assert torch.equal(loaded(z, labels), generator.eval()(z, labels))


def _saved(path, n=20, shape=(28, 28), labels=True):
    images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    save_samples(path, images, np.arange(n) % 10 if labels else None)
    return path


def _truncated(path):
    data = _saved(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bit_flipped(path):
    data = bytearray(_saved(path).read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the images' bytes: the zip's CRC-32 no longer matches
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "samples file not found (run the sample stage first)"),
        (_truncated, "not a samples file from the sample stage (File is not a zip file)"),
        (_bit_flipped, "not a samples file from the sample stage (Bad CRC-32 for file 'images.npy')"),
        (lambda p: _saved(p, n=0), "no images (expected the samples of sample.n_samples)"),
        (
            lambda p: np.savez(p, images=np.zeros((4, 28, 28), np.float32)),
            "'images' has dtype float32, expected uint8 (as the sample stage writes)",
        ),
        (
            lambda p: _saved(p, shape=(32, 32)),
            "'images' has shape (20, 32, 32), expected what a model makes: (N, 28, 28), (N, 64, 64, 3), "
            "(N, 96, 96, 3), (N, 128, 128, 3)",
        ),
        (
            lambda p: _saved(p, shape=(28, 28, 3)),
            "'images' has shape (20, 28, 28, 3), expected what a model makes: (N, 28, 28), (N, 64, 64, 3), "
            "(N, 96, 96, 3), (N, 128, 128, 3)",
        ),
        (
            lambda p: np.savez(p, images=np.zeros((3, 28, 28), np.uint8), labels=np.array([1, 10, -1])),
            "label 1 is 10, expected a digit 0-9",
        ),
        (
            lambda p: np.savez(p, images=np.zeros((3, 28, 28), np.uint8), labels=np.array([0.5, 1, 2])),
            "'labels' is float64 (3,), expected integers (3,): one per image",
        ),
        (
            lambda p: np.savez(p, images=np.zeros((3, 28, 28), np.uint8), labels=np.arange(4)),
            "'labels' is int64 (4,), expected integers (3,): one per image",
        ),
    ],
)
def test_bad_samples_files_are_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "samples.npz"
    make(path)
    with pytest.raises(DataError) as err:
        load_samples(path)
    assert str(err.value) == f"{path}: {message}"


def test_samples_of_another_image_shape_than_expected_are_refused(tmp_path):
    path = _saved(tmp_path / "faces.npz", shape=(64, 64, 3), labels=False)
    assert load_samples(path)[0].shape == (20, 64, 64, 3)  # a face model's samples
    with pytest.raises(DataError) as err:
        load_samples(path, image_shape=(28, 28))  # where digits are scored
    assert str(err.value) == f"{path}: 'images' has shape (20, 64, 64, 3), expected (N, 28, 28) here"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"feature_dim": 16}, "model: expected a mapping, got None"),
        ({"model": {"name": "cgan", "latent_dim": 12}}, "model.label_embedding: missing"),
        (
            {"model": {"name": "stylegan", "latent_dim": 12, "label_embedding": "one_hot"}},
            "model.name: expected one of cgan, convgan128, dcgan28, dcgan64, dcgan96, mlp_gan, got "
            "'stylegan'",
        ),
        (
            {"model": {"name": "cgan", "latent_dim": -1, "label_embedding": "one_hot"}},
            "model.latent_dim: expected an int in 1..1024, got -1",
        ),
    ],
)
def test_a_generator_whose_config_is_not_a_generators_is_one_line(tmp_path, config, message):
    path = tmp_path / "g.safetensors"
    save_weights(path, build_gan("cgan", 12)[0], config)
    with pytest.raises(DataError) as err:
        load_generator(path)
    assert str(err.value) == f"{path}: its config metadata is not a generator's: {message}"
