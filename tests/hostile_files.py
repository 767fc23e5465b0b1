"""Builders of hostile inputs, small on disk: HDF5 objects whose data lives outside the file or is declared
far larger than it, zip members over the size caps, PNG headers of decompression bombs."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"
# How each kind of HDF5 object that reads outside the file is named in the refusal.
OUTSIDE = {
    "external_storage": "keeps its data in the external file",
    "external_link": "is an external link to",
    "soft_link": "is a soft link to",
    "virtual": "is a virtual dataset mapping",
}


def add_outside(f: h5py.File, name: str, kind: str, folder: Path, shape: tuple, dtype: str = "u1") -> None:
    """Put at `name` in `f` a dataset of `shape` whose bytes come from a file in `folder` (a soft link: from
    another place in `f`): external storage over a 'secret' file, an external link or a virtual dataset
    into another HDF5 file, or a soft link."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if kind == "external_storage":
        secret = folder / "secret"
        secret.write_bytes((SECRET * (size // len(SECRET) + 1))[:size])
        f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, size)])
        return
    if kind == "soft_link":
        f.create_dataset("elsewhere", data=np.ones(shape, dtype))
        f[name] = h5py.SoftLink("/elsewhere")
        return
    other = folder / "other.h5"
    with h5py.File(other, "w") as o:
        o.create_dataset("data", data=np.ones(shape, dtype))
    if kind == "external_link":
        f[name] = h5py.ExternalLink(str(other), "/data")
    else:
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(other), "data", shape=shape)
        f.create_virtual_dataset(name, layout)


def add_huge(f: h5py.File, name: str, shape: tuple) -> None:
    """A chunked, gzip-compressed uint8 dataset that declares `shape` and stores nothing (a few KB)."""
    chunks = (1,) * (len(shape) - 1) + shape[-1:]
    f.create_dataset(name, shape=shape, dtype="u1", chunks=chunks, compression="gzip")


def zip_with_member(path: Path, name: str, n_zero_bytes: int, others: dict[str, bytes]) -> Path:
    """A zip of `others` and `name`: `n_zero_bytes` zero bytes, deflated (written in 1 MiB pieces)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for other, data in others.items():
            archive.writestr(other, data)
        with archive.open(name, "w", force_zip64=True) as member:
            piece = bytes(1 << 20)
            for start in range(0, n_zero_bytes, len(piece)):
                member.write(piece[: n_zero_bytes - start])
    return path


def png_header(width: int, height: int) -> bytes:
    """A grayscale PNG that declares width x height pixels and holds 1,000 zero bytes of image data: Pillow
    opens it and reads its size without decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(1000)))
        + chunk(b"IEND", b"")
    )
