"""CelebA faces from the raw forms users have (the tutorial's HDF5, a JPEG folder, the zip read in place)
to one chunked HDF5 dataset `images` uint8 (N, S, S, 3): centre crop, resize, train rows then test rows.

Decoding runs on `decode_workers` threads (Pillow releases the GIL while it decodes and resizes) and, when
the output is smaller than the crop, asks libjpeg for a reduced-size decode (draft mode: DCT scaling by
1/2, 1/4 or 1/8), so a 64x64 face costs a fraction of a full 178x218 decode.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import sys
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

from gan_pipeline.config import FaceDataConfig
from gan_pipeline.data.safety import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    check_hdf5,
    zip_member_problem,
)
from gan_pipeline.errors import DataError, first_line

FORMAT_VERSION = 1
H5_GROUP = "img_align_celeba"  # the tutorial's celeba_aligned_small.h5py layout
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CHUNK_BYTES = 1 << 20  # ~1 MiB HDF5 chunks: 16 faces at 128 px, 64 at 64 px
_BLOCK = 256  # images decoded per round of the worker pool (bounds memory; keeps the output in order)


class BadImage(Exception):
    """One raw image that cannot be used; `reason` is its skip-count key; `side`, for a too_small one, the
    shorter side of the image."""

    def __init__(self, reason: str, detail: str, side: int = 0):
        super().__init__(detail)
        self.reason, self.side = reason, side


@dataclass
class Skipped:
    """What on_bad_image: skip left out: counts per reason, and the largest shorter side of a too_small image
    (the largest crop_size that would have kept one)."""

    counts: Counter = field(default_factory=Counter)
    largest_small_side: int = 0


@dataclass(frozen=True)
class RawFaces:
    """The images a raw source holds, by name, and how to get each one's encoded bytes or decoded array."""

    where: str  # the file or folder, for messages
    names: list[str]  # in the source's order (sorted file names; the HDF5's N.jpg by N)
    read: Callable[[str], bytes | np.ndarray]  # JPEG/PNG bytes, or an already decoded (H, W, 3) uint8 array
    bad: list[tuple[str, str, str]]  # (name, reason, detail) of entries rejected while listing


def _is_unsafe(name: str) -> bool:
    """A zip member name that would land outside the archive's folder (absolute, drive, or '..')."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts


def open_zip(path: Path) -> RawFaces:
    """The images of a zip archive, read in place (nothing is extracted)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc})") from None
    names, bad = [], []
    for info in archive.infolist():
        if info.is_dir():
            continue
        if _is_unsafe(info.filename):
            bad.append((info.filename, "unsafe_name", "member name escapes the archive"))
        elif not info.filename.lower().endswith(IMAGE_SUFFIXES):
            bad.append((info.filename, "not_an_image", "not a .jpg/.jpeg/.png member"))
        elif problem := zip_member_problem(info.file_size, info.compress_size):
            bad.append((info.filename, "too_large", problem))
        else:
            names.append(info.filename)
    names.sort()

    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged member: CRC or header
            raise BadImage("corrupt", f"cannot read the member ({exc})") from None

    return RawFaces(str(path), names, read, bad)


def open_folder(path: Path) -> RawFaces:
    """The .jpg/.jpeg/.png files directly in a folder (other files are not images and are ignored)."""
    names = sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    def read(name: str) -> bytes:
        try:
            return (path / name).read_bytes()
        except OSError as exc:
            raise BadImage("corrupt", f"cannot read ({exc.strerror or exc})") from None

    return RawFaces(str(path), names, read, [])


def open_celeba_h5(path: Path) -> RawFaces:
    """The tutorial's HDF5: group img_align_celeba, one decoded (218, 178, 3) uint8 dataset per N.jpg.

    The file must hold its own data (no links or external storage) and no dataset may declare more than one
    MAX_IMAGE_PIXELS image, checked on the metadata before any image is read."""
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            check_hdf5(path, f, MAX_IMAGE_BYTES, f"one image ({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} RGB)")
            group = f.get(H5_GROUP)
            if not isinstance(group, h5py.Group):
                raise DataError(
                    f"{path}: no '{H5_GROUP}' group (expected the tutorial's celeba_aligned_small layout)"
                )
            keys = list(group.keys())
    except OSError as exc:  # truncated or damaged: h5py says which part it could not read
        raise DataError(f"{path}: unreadable HDF5 file ({first_line(exc)})") from None
    names, bad = [], []
    for key in keys:
        stem = key.removesuffix(".jpg")
        if stem.isdigit() and key.endswith(".jpg"):
            names.append(key)
        else:
            bad.append((key, "not_an_image", "not an N.jpg dataset"))
    names.sort(key=lambda k: int(k.removesuffix(".jpg")))
    # Opened on the first read, by a decode worker: an open h5py handle does not survive a fork, so none is
    # made before reading starts.
    handle: list[h5py.File] = []

    def read(name: str) -> np.ndarray:
        if not handle:
            handle.append(h5py.File(path, "r"))
        array = handle[0][H5_GROUP][name]
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise BadImage("corrupt", f"expected a uint8 (H, W, 3) array, found {array.dtype} {array.shape}")
        return array[()]

    return RawFaces(str(path), names, read, bad)


def open_raw(cfg: FaceDataConfig) -> RawFaces:
    path = Path(cfg.path)
    if cfg.source == "jpeg_folder":
        if not path.is_dir():
            raise DataError(f"{path}: folder not found (expected a folder of img_align_celeba JPEGs)")
        return open_folder(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a {cfg.source} file)")
    return open_zip(path) if cfg.source == "zip" else open_celeba_h5(path)


def crop_resize(raw: bytes | np.ndarray, crop: int, size: int) -> np.ndarray:
    """The centre crop x crop square of an image, resized to size x size: uint8 (size, size, 3).

    Encoded JPEGs are decoded at the smallest libjpeg scale that keeps the crop at least `size` wide. An image
    whose header declares more than MAX_IMAGE_PIXELS is refused before it is decoded (`too_large`), as is one
    that Pillow takes for a decompression bomb (its warning, when made an error, too).
    """
    try:
        if isinstance(raw, np.ndarray):
            image = Image.fromarray(raw)
            full = image.size
        else:
            image = Image.open(io.BytesIO(raw))
            full = image.size
            if full[0] * full[1] > MAX_IMAGE_PIXELS:
                cap = f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"
                raise BadImage("too_large", f"{full[0]}x{full[1]} pixels, over the {cap} cap: not decoded")
            if size < crop and image.format == "JPEG":
                image.draft("RGB", (-(-full[0] * size // crop), -(-full[1] * size // crop)))
            image.load()
        return np.asarray(_scaled_crop(image.convert("RGB"), full, crop, size), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too_large", f"not decoded: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImage("corrupt", f"cannot decode the image ({exc})") from None


def _scaled_crop(image: Image.Image, full: tuple[int, int], crop: int, size: int) -> Image.Image:
    """Crop the centre `crop` square (in full-resolution pixels) of `image`, which may be a draft-scaled
    decode of a `full`-sized picture, and resize it to `size`."""
    w, h = full
    if w < crop or h < crop:
        raise BadImage("too_small", f"{w}x{h} is smaller than the {crop}x{crop} crop", side=min(w, h))
    scale = image.size[0] / w
    left, top = (w - crop) / 2 * scale, (h - crop) / 2 * scale
    box = (left, top, left + crop * scale, top + crop * scale)
    if scale == 1 and crop == size and left.is_integer() and top.is_integer():
        return image.crop(tuple(int(v) for v in box))
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _read_annotation(
    path: Path, column: str, what: str, expect: str, ok: Callable[[str], bool]
) -> dict[str, str]:
    """File name -> its `column` value, from a CelebA annotation file: the .txt form ("000001.jpg <value>" per
    line, as list_eval_partition.txt and identity_CelebA.txt are) or a CSV with `filename` and `column`
    columns (a comma in the first line tells them apart). `what` names the file in messages; a value that
    fails `ok` is an error saying `expect`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    first = text.split("\n", 1)[0]
    out: dict[str, str] = {}
    if "," in first:
        rows = csv.DictReader(io.StringIO(text))
        if not {"filename", column} <= set(rows.fieldnames or ()):
            raise DataError(f"{path}: expected CSV columns filename and {column}, found {rows.fieldnames}")
        pairs = ((i, r["filename"], r[column]) for i, r in enumerate(rows, 2))
    else:
        pairs = ((i, *line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip())
    for line_no, *cells in pairs:
        if len(cells) != 2 or not ok(cells[1]):
            raise DataError(f"{path}: line {line_no}: expected a file name and {expect}, found {cells}")
        out[cells[0]] = cells[1]
    return out


def read_partition(path: Path) -> dict[str, int]:
    """CelebA's eval partition per file name: list_eval_partition.txt, or a CSV (filename, eval_partition)."""
    table = _read_annotation(
        path, "eval_partition", "partition", "a partition 0, 1 or 2", lambda v: v in ("0", "1", "2")
    )
    return {name: int(value) for name, value in table.items()}


def read_identities(path: Path) -> dict[str, str]:
    """CelebA's identity (the person) per file name: identity_CelebA.txt, or a CSV (filename, identity)."""
    return _read_annotation(path, "identity", "identity", "an identity", bool)


def _per_image(table: dict[str, Any], names: list[str], file: str, what: str) -> list[Any]:
    """table's value for each of `names` (looked up by file name, without a zip's folder), or the one-line
    error naming `file`, how many images it lacks and the first of them."""
    missing = [n for n in names if PurePosixPath(n).name not in table]
    if missing:
        raise DataError(f"{file}: no {what} for {len(missing)} of {len(names)} images (first: {missing[0]})")
    return [table[PurePosixPath(n).name] for n in names]


def identities_of(cfg: FaceDataConfig, names: list[str]) -> list[str] | None:
    """The identity of each of `names` from cfg.identity_file (None without one)."""
    if cfg.identity_file is None:
        return None
    return _per_image(read_identities(Path(cfg.identity_file)), names, cfg.identity_file, "identity")


def split_names(
    cfg: FaceDataConfig, names: list[str], identities: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """(train names, test names), each in source order: official partitions or a seeded permutation, of the
    images or, given each image's identity (`identities_of`), of the identities, so that every person is on
    one side only."""
    if cfg.split == "official":
        assert cfg.partition_file is not None  # checked with the params
        partition = read_partition(Path(cfg.partition_file))
        is_test = np.array(_per_image(partition, names, cfg.partition_file, "partition")) != 0
    elif identities is not None:
        is_test = _identity_test_mask(identities, cfg.test_fraction, cfg.split_seed)
    else:
        is_test = np.zeros(len(names), dtype=bool)
        order = np.random.default_rng(cfg.split_seed).permutation(len(names))
        is_test[order[: round(len(names) * cfg.test_fraction)]] = True
    return [n for n, t in zip(names, is_test, strict=True) if not t], [
        n for n, t in zip(names, is_test, strict=True) if t
    ]


def _identity_test_mask(identities: list[str], test_fraction: float, seed: int) -> np.ndarray:
    """Which images go to test when whole identities do: a `seed` permutation of the identities (sorted
    first, so that neither the file's nor the images' order matters), taken in turn until at least
    test_fraction of the images are in test; bool (N,)."""
    people, person, counts = np.unique(np.array(identities), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(people))
    # An image count, rounded first so that float noise (0.1 * 30 = 3.0000000000000004) asks for no more.
    need = math.ceil(round(test_fraction * len(identities), 6))
    taken = int(np.searchsorted(np.cumsum(counts[order]), need)) + 1  # the shortest prefix holding `need`
    return np.isin(person, order[:taken])


def chunk_rows(image_size: int) -> int:
    """Images per HDF5 chunk: the most that fit in CHUNK_BYTES (at least 1)."""
    return max(1, CHUNK_BYTES // (image_size * image_size * 3))


def _decoded(
    raw: RawFaces, names: list[str], cfg: FaceDataConfig, skipped: Skipped
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, image) for each usable name, in order; bad ones raise or are counted, as cfg says."""

    def work(name: str) -> np.ndarray | BadImage:
        try:
            return crop_resize(raw.read(name), cfg.crop_size, cfg.image_size)
        except BadImage as exc:
            return exc

    # Pillow only warns below twice its pixel limit; as an error it becomes a too_large image. The filter is
    # set here, on the calling thread, around the whole pool: warning filters are global, not per thread.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=cfg.decode_workers) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for start in range(0, len(names), _BLOCK):
            block = names[start : start + _BLOCK]
            for name, result in zip(block, pool.map(work, block), strict=True):
                if isinstance(result, BadImage):
                    _reject(raw.where, name, result, cfg, skipped)
                else:
                    yield name, result


def _reject(where: str, name: str, bad: BadImage, cfg: FaceDataConfig, skipped: Skipped) -> None:
    """Raise the one-line error for a bad image, or count it, as cfg.on_bad_image says."""
    if cfg.on_bad_image == "error":
        fix = f"set crop_size to at most {bad.side}, or " if bad.reason == "too_small" else "set "
        raise DataError(f"{where}: {name}: {bad} ({fix}on_bad_image: skip to leave such images out)")
    skipped.counts[bad.reason] += 1
    if bad.reason == "too_small":
        skipped.largest_small_side = max(skipped.largest_small_side, bad.side)


def _write_images(
    f: h5py.File, raw: RawFaces, cfg: FaceDataConfig, splits: dict[str, list[str]], skipped: Skipped
) -> tuple[list[str], dict[str, int], Any]:
    """Decode each split's faces into f["images"] (train rows first) in blocks of 16 chunks; return the
    names kept, the count per split and the sha256 of the pixels written."""
    size = cfg.image_size
    rows = chunk_rows(size)
    digest = hashlib.sha256()
    # No compression: JPEG-noisy faces barely shrink, and training reads stay plain memcpy.
    images = f.create_dataset(
        "images", shape=(0, size, size, 3), maxshape=(None, size, size, 3), dtype=np.uint8,
        chunks=(rows, size, size, 3),
    )  # fmt: skip
    kept: list[str] = []
    buffer: list[np.ndarray] = []
    counts: dict[str, int] = {}

    def flush() -> None:
        if buffer:
            block = np.stack(buffer)
            digest.update(block.tobytes())
            n = images.shape[0]
            images.resize(n + len(block), axis=0)
            images[n:] = block
            buffer.clear()

    for split, names in splits.items():
        before = len(kept)
        for name, image in _decoded(raw, names, cfg, skipped):
            kept.append(name)
            buffer.append(image)
            if len(buffer) == rows * 16:
                flush()
        flush()
        counts[split] = len(kept) - before
    return kept, counts, digest


def _open_checked(cfg: FaceDataConfig, skipped: Skipped) -> tuple[RawFaces, list[str]]:
    """The raw source and the names to prepare (max_images of them), after the checks that need no decoding:
    it exists and is of its kind, it is a safe HDF5, and what its listing rejects (unsafe names, non-images,
    members over the size caps) raises or is counted in `skipped`."""
    raw = open_raw(cfg)
    for name, reason, detail in raw.bad:
        _reject(raw.where, name, BadImage(reason, detail), cfg, skipped)
    names = raw.names[: cfg.max_images] if cfg.max_images else raw.names
    if not names:
        raise DataError(f"{raw.where}: no images found (expected {cfg.source} CelebA faces)")
    return raw, names


def check_faces(cfg: FaceDataConfig) -> None:
    """The DataError that prepare_faces would raise about cfg's raw source before decoding any image, from
    names, headers and HDF5 metadata only (a folder is listed, a zip's directory read), and about its
    partition and identity files (readable, well-formed, naming every image)."""
    _, names = _open_checked(cfg, Skipped())
    split_names(cfg, names, identities_of(cfg, names))  # the partition and identity files, read and matched


def _split_error(
    where: str, cfg: FaceDataConfig, counts: dict[str, int], skipped: Skipped, n: int, n_people: int
) -> DataError:
    """Why the split has an empty side, with how many identities a split by identity had to share out, what
    on_bad_image: skip left out and, when images were too small for the crop, the crop_size that would keep
    them."""
    message = (
        f"{where}: the {cfg.split} split gives {counts['train']} train and {counts['test']} test images "
        "(each needs at least 1)"
    )
    if cfg.split == "seeded" and cfg.identity_file is not None:
        message += f"; it moves whole identities, and {cfg.identity_file} gives these images {n_people}"
    if skipped.counts:
        left_out = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.counts.items()))
        message += f"; on_bad_image: skip left out {sum(skipped.counts.values())} of {n} images ({left_out})"
    if skipped.largest_small_side:
        message += (
            f"; the too_small ones are narrower than crop_size {cfg.crop_size} (the widest, on its shorter "
            f"side, {skipped.largest_small_side} px): set crop_size to at most {skipped.largest_small_side}"
        )
    return DataError(message)


def prepare_faces(cfg: FaceDataConfig, out_h5: str | Path, out_stats: str | Path) -> dict:
    """Raw faces -> out_h5 (`images` uint8 (N, S, S, 3), train rows first, `names`) and a stats JSON."""
    from gan_pipeline.io import atomic_path, write_json  # here: the rest of this module runs without torch

    start = time.perf_counter()
    skipped = Skipped()
    raw, names = _open_checked(cfg, skipped)
    identities = identities_of(cfg, names)
    train_names, test_names = split_names(cfg, names, identities)
    size = cfg.image_size
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            splits = {"train": train_names, "test": test_names}
            kept, counts, digest = _write_images(f, raw, cfg, splits, skipped)
            if counts["train"] == 0 or counts["test"] == 0:
                n_people = len(set(identities or ()))
                raise _split_error(raw.where, cfg, counts, skipped, len(names) + len(raw.bad), n_people)
            digest.update(f"n_train={counts['train']}".encode())
            f.create_dataset("names", data=np.array(kept, dtype=h5py.string_dtype()))
            f.attrs.update(
                n_train=counts["train"], n_test=counts["test"], source=cfg.source, kind="faces",
                content_hash=f"sha256:{digest.hexdigest()}", format_version=FORMAT_VERSION,
            )  # fmt: skip
        stats = {
            "source": cfg.source,
            "split": cfg.split,
            "n_total": len(kept),
            "n_train": counts["train"],
            "n_test": counts["test"],
            "image_shape": [size, size, 3],
            "crop_size": cfg.crop_size,
            "skipped": dict(sorted(skipped.counts.items())),
            "content_hash": f"sha256:{digest.hexdigest()}",
            "identity_file": cfg.identity_file,
            **_identity_stats(identities, names, kept, counts["train"]),
        }
        write_json(out_stats, stats)
    seconds = time.perf_counter() - start
    stats["images_per_s"] = len(kept) / seconds
    skipped_note = f", skipped {dict(skipped.counts)}" if skipped.counts else ""
    print(
        f"prepare: {len(kept)} faces ({counts['train']} train, {counts['test']} test) from {cfg.source} "
        f"in {seconds:.2f} s ({stats['images_per_s']:,.0f} images/s, {cfg.decode_workers} decode workers)"
        f"{skipped_note} -> {out_h5}"
    )
    if identities is not None:
        _say_identities(cfg, stats)
    return stats


IDENTITY_KEYS = ("n_identities_train", "n_identities_test", "identities_shared")


def _identity_stats(identities: list[str] | None, names: list[str], kept: list[str], n_train: int) -> dict:
    """IDENTITY_KEYS of the images kept (train rows first): the identities on each side and how many are on
    both; null without an identity file."""
    if identities is None:
        return dict.fromkeys(IDENTITY_KEYS)
    person = dict(zip(names, identities, strict=True))
    train, test = ({person[n] for n in side} for side in (kept[:n_train], kept[n_train:]))
    return dict(zip(IDENTITY_KEYS, (len(train), len(test), len(train & test)), strict=True))


def _say_identities(cfg: FaceDataConfig, stats: dict) -> None:
    """One line on the identities of each side: a seeded split by identity shares none by construction; an
    official one is only checked, and a shared identity is a warning (CelebA's own split is
    identity-disjoint, so a partition file of another origin would put test people in training)."""
    train, test, shared = (stats[k] for k in IDENTITY_KEYS)
    sides = f"{train} identities in train, {test} in test"
    if cfg.split == "seeded":
        print(f"prepare: split by identity ({cfg.identity_file}): {sides}, none in both")
    elif shared == 0:
        print(f"prepare: {sides}, none in both: the official split is identity-disjoint, as CelebA's is")
    else:
        print(
            f"warning: {cfg.partition_file}: {shared} of the identities in {cfg.identity_file} have faces in "
            f"both train ({train} identities) and test ({test}): the official split is not identity-disjoint "
            "(CelebA's is: is the partition file from another dataset?), so test faces show people seen in "
            "training (split: seeded with the identity file keeps each person on one side)",
            file=sys.stderr,
        )
