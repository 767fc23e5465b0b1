"""Training batches streamed from a prepared face HDF5 file, never loading it whole (CelebA at 128 px is
~10 GB): chunk-aligned blocks are visited in a random order and shuffled within a buffer of a few blocks,
and a background thread reads and converts them while the model trains (to a GPU through pinned memory,
without blocking)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from gan_pipeline.data.loading import (
    BatchSource,
    TensorBatches,
    load_split,
    open_prepared,
    split_counts,
    to_float,
)
from gan_pipeline.data.safety import MAX_IMAGE_PIXELS, check_hdf5
from gan_pipeline.errors import DataError
from gan_pipeline.runtime import to_device

_DONE = object()


def face_counts(path: str | Path) -> tuple[int, int, int]:
    """(n_train, n_test, rows per chunk) of a prepared face file, after checking what it holds: its own data
    (no links or external storage), images of at most MAX_IMAGE_PIXELS, chunks within the cap (the file is
    streamed a chunk at a time, so the number of images has none)."""
    path = Path(path)
    with open_prepared(path) as f:
        check_hdf5(path, f, None)
        images = f.get("images")
        if not isinstance(images, h5py.Dataset) or f.attrs.get("kind") != "faces":
            raise DataError(f"{path}: not a prepared face file (no 'images' dataset of kind 'faces')")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise DataError(f"{path}: 'images' is {images.dtype} {images.shape}, expected uint8 (N, S, S, 3)")
        if images.shape[1] * images.shape[2] > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}: 'images' has shape {images.shape}: images over the {MAX_IMAGE_PIXELS:,}-pixel cap "
                "(the prepare stage writes image_size x image_size faces)"
            )
        n_train, n_test = split_counts(path, f, images.shape[0])
        return n_train, n_test, (images.chunks or (1,))[0]


def read_faces(
    path: str | Path, split: str, limit: int | None = None, indices: np.ndarray | None = None
) -> np.ndarray:
    """uint8 (n, S, S, 3) images of one split: the first `limit` (default all), or those at increasing
    `indices` within the split; for evaluation sizes only."""
    n_train, n_test, _ = face_counts(path)
    start, n = (0, n_train) if split == "train" else (n_train, n_test)
    with h5py.File(path, "r") as f:
        if indices is not None:
            return f["images"][start + np.asarray(indices, dtype=np.int64)]
        return f["images"][start : start + min(n, limit or n)]


def shuffled_order(n: int, block: int, buffer_blocks: int, rng: torch.Generator) -> torch.Tensor:
    """A permutation of range(n) that reads well from chunks of `block` rows: the blocks in a random order,
    then the rows of each run of `buffer_blocks` consecutive (shuffled) blocks permuted among themselves."""
    blocks = torch.randperm(-(-n // block), generator=rng).tolist()
    parts = []
    for g in range(0, len(blocks), buffer_blocks):
        rows = torch.cat(
            [torch.arange(b * block, min((b + 1) * block, n)) for b in blocks[g : g + buffer_blocks]]
        )
        parts.append(rows[torch.randperm(len(rows), generator=rng)])
    return torch.cat(parts)


def _nchw_float(batch_u8: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) on value_range, with to_float's arithmetic (so the same
    values). NumPy, single-threaded: torch's OpenMP pool here would fight the training step's for the cores
    (docs/benchmarks.md, "Faces")."""
    low, high = value_range
    out = batch_u8.transpose(0, 3, 1, 2).astype(np.float32)
    out /= np.float32(255)
    out *= np.float32(high - low)
    out += np.float32(low)
    return out


class H5Batches:
    """A BatchSource over the train split of a prepared face file: (B, 3, S, S) float in value_range, and
    zero labels (faces are unconditional), read by a background thread `prefetch` batches ahead."""

    def __init__(
        self,
        path: str | Path,
        value_range: tuple[float, float],
        batch_size: int,
        device: torch.device | str = "cpu",
        buffer_images: int = 1024,
        prefetch: int = 4,
    ):
        self.path = Path(path)
        self.n, _, self.block = face_counts(self.path)
        if not 0 < batch_size <= self.n:
            raise ValueError(f"batch_size must be in 1..{self.n}, got {batch_size}")
        self.value_range, self.batch_size, self.device = value_range, batch_size, torch.device(device)
        self.buffer_blocks = max(1, buffer_images // self.block)
        self.prefetch = prefetch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def epoch(self, rng: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: this body, and so the draws from rng, runs when the first batch is requested.
        order = shuffled_order(self.n, self.block, self.buffer_blocks, rng)[: len(self) * self.batch_size]
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(order, batches, stop), daemon=True)
        reader.start()
        labels = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        try:
            while (item := batches.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item, labels
        finally:
            stop.set()
            reader.join()

    def _read(self, order: torch.Tensor, batches: queue.Queue, stop: threading.Event) -> None:
        """Reader thread: load whole blocks as the order reaches them, drop them when used up, and queue
        converted batches. The file is opened here, in the one thread that reads it: an open h5py handle does
        not survive a fork, so H5Batches itself holds none."""

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            block = self.block
            rows = order.numpy()
            remaining = np.bincount(rows // block, minlength=-(-self.n // block))
            loaded: dict[int, np.ndarray] = {}
            with h5py.File(self.path, "r") as f:
                images = f["images"]
                for start in range(0, len(rows), self.batch_size):
                    idx = rows[start : start + self.batch_size]
                    for b in np.unique(idx // block):
                        if b not in loaded:
                            loaded[b] = images[b * block : min((b + 1) * block, self.n)]
                    batch = np.stack([loaded[i // block][i % block] for i in idx])
                    for b, used in zip(*np.unique(idx // block, return_counts=True), strict=True):
                        remaining[b] -= used
                        if remaining[b] == 0:
                            del loaded[b]
                    if not put(
                        to_device(torch.from_numpy(_nchw_float(batch, self.value_range)), self.device)
                    ):
                        return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)


def is_face_file(path: str | Path) -> bool:
    """Whether `path` is a prepared face file (and not, say, the MNIST one)."""
    path = Path(path)
    if not (path.is_file() and h5py.is_hdf5(path)):
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("kind") == "faces"
    except OSError:  # unreadable (e.g. truncated): load_split names the file and the damage
        return False


def train_size(path: str | Path) -> int:
    """The number of training images in a prepared file (MNIST or faces)."""
    return face_counts(path)[0] if is_face_file(path) else len(load_split(path, "train")[1])


def train_batches(
    path: str | Path, value_range: tuple[float, float], batch_size: int, device: torch.device
) -> BatchSource:
    """The training loop's batches from a prepared file: MNIST-sized data lives on the device as one
    tensor (TensorBatches); faces are streamed from the file (H5Batches)."""
    if is_face_file(path):
        return H5Batches(path, value_range, batch_size, device)
    images, labels = load_split(path, "train")
    return TensorBatches(to_float(images, value_range).to(device), torch.from_numpy(labels), batch_size)
