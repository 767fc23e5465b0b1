"""Size caps on raw and prepared data, and the check that an HDF5 file holds its own data, all applied to
metadata before any pixel is read: HDF5 can pull bytes from other files (external storage, external links,
virtual datasets) and can declare datasets far larger than the file, and a zip member or an image header can
promise more than memory holds. No torch here: the pipeline's first check runs this without it."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from h5py import h5d, h5l, h5o

from gan_pipeline.errors import DataError

# One raw image, decoded: 4096 x 4096 pixels. CelebA's aligned faces are 178 x 218 (38,804 pixels) and
# FFHQ's 1024 x 1024; 16.8 M pixels is 16 times FFHQ and 430 times CelebA, and one such image decodes to
# 48 MiB of RGB per decode worker. Larger headers come from decompression bombs, not from face photographs.
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
MAX_IMAGE_BYTES = MAX_IMAGE_PIXELS * 3  # the same image as a decoded uint8 RGB array (the tutorial's HDF5)
# A zip member, uncompressed: 64 MiB holds a 4096 x 4096 RGB PNG stored without compression (48 MiB); CelebA's
# JPEGs are 4-16 KB.
MAX_MEMBER_BYTES = 64 << 20
# Uncompressed over compressed size of a zip member. JPEG and PNG data is compressed already: deflate shrinks
# CelebA's JPEGs by 1-8 % (ratios 1.01-1.08); only data made to expand reaches 100.
MAX_COMPRESSION_RATIO = 100
# The prepared digits are read whole into memory: 1 GiB holds 1.37 M 28 x 28 images, 19 times the 70,000 of
# the full MNIST.
MAX_DIGITS_BYTES = 1 << 30
# One HDF5 chunk: reading any row of a chunked dataset decodes its whole chunk. The prepare stage writes
# chunks of at most 1 MiB (faces) and of 1024 digits (0.8 MB).
MAX_CHUNK_BYTES = 64 << 20


def mib(n_bytes: float) -> str:
    """A byte count in MiB or GiB, for messages."""
    return f"{n_bytes / (1 << 30):.1f} GiB" if n_bytes >= 1 << 30 else f"{n_bytes / (1 << 20):.1f} MiB"


def zip_member_problem(file_size: int, compress_size: int) -> str | None:
    """Why a zip member of these declared sizes is not read, or None: over MAX_MEMBER_BYTES uncompressed or
    over MAX_COMPRESSION_RATIO. (zipfile stops a member at its declared size, so the declaration bounds the
    read.)"""
    if file_size > MAX_MEMBER_BYTES:
        return f"declares {mib(file_size)} uncompressed, over the {mib(MAX_MEMBER_BYTES)} cap for one image"
    if file_size > MAX_COMPRESSION_RATIO * max(compress_size, 1):
        return (
            f"declares {file_size} bytes uncompressed from {compress_size} compressed, a ratio over the "
            f"{MAX_COMPRESSION_RATIO}:1 cap for image data, which barely compresses"
        )
    return None


_OWN_DATA = "(refused: only data stored in the file itself is read)"


def _link_problem(f: h5py.File, name: str, link_type: int) -> str | None:
    if link_type == h5l.TYPE_HARD:
        return None
    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return f"/{name} is an external link to {link.filename}:{link.path} {_OWN_DATA}"
    if isinstance(link, h5py.SoftLink):
        return f"/{name} is a soft link to {link.path} {_OWN_DATA}"
    return f"/{name} is a user-defined link {_OWN_DATA}"


def _dataset_problem(name: str, dset: h5d.DatasetID, max_bytes: int | None, cap_what: str) -> str | None:
    """What is wrong with one dataset, from its header and creation properties (the low-level API: opening
    each as an h5py.Dataset took 3.5 times as long, and the tutorial's file holds one dataset per face)."""
    dcpl = dset.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        files = sorted({dcpl.get_virtual_filename(i) for i in range(dcpl.get_virtual_count())})
        return f"/{name} is a virtual dataset mapping {', '.join(files)} {_OWN_DATA}"
    if dcpl.get_external_count():
        external = dcpl.get_external(0)[0].decode(errors="replace")
        return f"/{name} keeps its data in the external file {external!r} {_OWN_DATA}"
    shape, itemsize = dset.shape or (), dset.dtype.itemsize
    declared = int(np.prod(shape, dtype=np.float64)) * itemsize
    if max_bytes is not None and declared > max_bytes:
        return (
            f"/{name} declares shape {shape} {dset.dtype}, {mib(declared)}, over the {mib(max_bytes)} cap "
            f"for {cap_what}"
        )
    if layout == h5d.CHUNKED:
        chunks = dcpl.get_chunk()
        chunk = int(np.prod(chunks, dtype=np.float64)) * itemsize
        if chunk > MAX_CHUNK_BYTES:
            return f"/{name} has chunks of {chunks}, {mib(chunk)}, over the {mib(MAX_CHUNK_BYTES)} cap"
    return None


def check_hdf5(path: str | Path, f: h5py.File, max_dataset_bytes: int | None, cap_what: str = "") -> None:
    """DataError unless every object of `f` is stored in the file itself: only hard links (no soft, external
    or user-defined ones), no external storage, no virtual dataset, each dataset's declared size within
    `max_dataset_bytes` (None: no cap; `cap_what` says what it is the cap of) and each chunk within
    MAX_CHUNK_BYTES.

    Reads metadata only (links, dataset headers), never data."""
    problems: list[str] = []

    def visit(name: bytes, info: h5l.LinkInfo) -> int | None:
        text = name.decode(errors="replace")
        problem = _link_problem(f, text, info.type)
        if problem is None:
            obj = h5o.open(f.id, name)
            if isinstance(obj, h5d.DatasetID):
                problem = _dataset_problem(text, obj, max_dataset_bytes, cap_what)
        if problem is not None:
            problems.append(problem)
            return 1  # stops the visit
        return None

    f.id.links.visit(visit, info=True)  # each link once (a hard-link cycle is followed once)
    if problems:
        raise DataError(f"{path}: {problems[0]}")
