"""The prepare stage's logic: raw digits → one HDF5 file (train rows, then test rows) and its stats JSON."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import h5py
import numpy as np

from gan_pipeline.config import DataConfig
from gan_pipeline.data.sources import IMAGE_SHAPE, load_source
from gan_pipeline.errors import DataError

FORMAT_VERSION = 1
N_CLASSES = 10
_CHUNK_IMAGES = 1024


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split stratified by label: each class sends round(n_class * test_fraction) rows to test.

    Returns sorted int64 row indices (train, test), disjoint and together covering every row.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):  # sorted, so the draws happen in the same order every time
        rows = np.flatnonzero(labels == label)
        is_test[rng.permutation(rows)[: round(len(rows) * test_fraction)]] = True
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)


def content_hash(images: np.ndarray, labels: np.ndarray, n_train: int) -> str:
    """sha256 over the images' and labels' bytes and the train/test boundary, as "sha256:<hex>"."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).data)
    digest.update(str(n_train).encode())
    return f"sha256:{digest.hexdigest()}"


def _split(cfg: DataConfig, labels: np.ndarray, is_test: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if cfg.split == "seeded":
        return split_indices(labels, cfg.test_fraction, cfg.split_seed)
    if is_test is None:
        where = f" at {cfg.path}" if cfg.path else ""
        raise DataError(
            f"data.split: 'official' needs a source with its own test rows, but source {cfg.source!r}{where} "
            "has none (use split: seeded, or a folder of train and test files)"
        )
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)


def prepare(cfg: DataConfig, out_h5: Path, out_stats: Path) -> dict:
    """Load cfg's source, split it, write the HDF5 file and the stats JSON atomically; return the stats.

    On any error neither output is written and earlier files at those paths are left as they were.
    """
    from gan_pipeline.io import atomic_path, write_json  # here: the rest of this module runs without torch

    start = time.perf_counter()
    raw = load_source(cfg)
    train, test = _split(cfg, raw.labels, raw.is_test)
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"data.split: the {cfg.split} split of {len(raw.labels)} images gives {len(train)} train and "
            f"{len(test)} test images (each needs at least 1)"
        )
    source_index = np.concatenate([train, test])
    images = raw.images[source_index]  # (N, 28, 28), train rows first
    labels = raw.labels[source_index]
    n_train, n_test = len(train), len(test)
    stats = {
        "source": cfg.source,
        "split": cfg.split,
        "n_total": n_train + n_test,
        "n_train": n_train,
        "n_test": n_test,
        "image_shape": list(IMAGE_SHAPE),
        "class_counts_train": np.bincount(labels[:n_train], minlength=N_CLASSES).tolist(),
        "class_counts_test": np.bincount(labels[n_train:], minlength=N_CLASSES).tolist(),
        "content_hash": content_hash(images, labels, n_train),
    }
    # The stats are written inside the HDF5 file's atomic block, so a failure in either leaves both
    # outputs as they were.
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            # gzip level 1: a several times smaller DVC cache for a fraction of a second more per read.
            f.create_dataset(
                "images",
                data=images,
                chunks=(min(len(images), _CHUNK_IMAGES), *IMAGE_SHAPE),
                compression="gzip",
                compression_opts=1,
            )
            f.create_dataset("labels", data=labels)
            f.create_dataset("source_index", data=source_index)
            f.attrs["n_train"] = n_train
            f.attrs["n_test"] = n_test
            f.attrs["source"] = cfg.source
            f.attrs["content_hash"] = stats["content_hash"]
            f.attrs["format_version"] = FORMAT_VERSION
        write_json(out_stats, stats)
    seconds = time.perf_counter() - start
    print(
        f"prepare: {len(images)} images ({n_train} train, {n_test} test) from {cfg.source} "
        f"in {seconds:.2f} s ({len(images) / seconds:,.0f} images/s) -> {out_h5}"
    )
    return stats
