"""Fixed-seed samples from a trained generator, and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from gan_pipeline.data.loading import to_uint8
from gan_pipeline.errors import DataError
from gan_pipeline.io import atomic_path, load_module
from gan_pipeline.models import GAN_MODELS, GanSpec, build_gan
from gan_pipeline.runtime import module_device

FACE_GRID_ROWS = 8  # RGB models: 8x8 grids (digit grids keep sample.grid_rows)


def balanced_labels(n: int, n_classes: int = 10) -> torch.Tensor:
    """Labels 0, 1, ..., 9, 0, 1, ... so that every digit is asked for equally often."""
    return torch.arange(n) % n_classes


@torch.inference_mode()
def generate(
    generator: nn.Module,
    spec: GanSpec,
    latent_dim: int,
    n: int,
    seed: int,
    labels: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`n` samples as uint8 (n, H, W), or (n, H, W, 3) for RGB models, from latents drawn with `seed`,
    and the labels asked for.

    Conditional models get `labels` (default: balanced_labels(n)); unconditional ones get None back.
    """
    generator.eval()
    dev = module_device(generator)
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))
    if spec.conditional and labels is None:
        labels = balanced_labels(n)
    out = []
    for start in range(0, n, batch_size):
        cond = (labels[start : start + batch_size].to(dev),) if spec.conditional else ()
        fake = generator(z[start : start + batch_size].to(dev), *cond).float().cpu()
        out.append(to_uint8(fake, spec.value_range))
    images = torch.cat(out).numpy()
    return images, (labels.numpy() if spec.conditional else None)


def grid_samples(
    generator: nn.Module, spec: GanSpec, latent_dim: int, images: np.ndarray, grid_rows: int, seed: int
) -> tuple[np.ndarray, int]:
    """The pictures of an experiment's sample grid and its number of rows: for conditional models row d
    shows digit d (one column per latent, drawn with `seed`), RGB models the first 8x8 `images`, digit
    models the first `grid_rows` x `grid_rows`."""
    rows = grid_rows if spec.image_shape[0] == 1 else FACE_GRID_ROWS
    if not spec.conditional:
        return images[: rows * rows], rows
    grid_labels = torch.arange(10).repeat_interleave(rows)
    grid, _ = generate(generator, spec, latent_dim, len(grid_labels), seed, grid_labels)
    return grid, 10


def grid_image(images: np.ndarray, rows: int, pad: int = 2, scale: int = 2) -> Image.Image:
    """Tile uint8 images (n, H, W) or (n, H, W, 3) row by row into one picture, `rows` rows high."""
    n, h, w = images.shape[:3]
    cols = -(-n // rows)
    channels = images.shape[3:] if images.ndim == 4 else ()
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *channels), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w
        ] = img
    picture = Image.fromarray(canvas)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def save_grid(images: np.ndarray, rows: int, path: str | Path) -> None:
    """Write a PNG grid of `images` atomically."""
    with atomic_path(path) as tmp:
        grid_image(images, rows).save(tmp, format="PNG")


def save_samples(path: str | Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    """The raw samples for evaluate: an .npz with `images` uint8 (n, H, W) or RGB (n, H, W, 3) and, if
    conditional, `labels`."""
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The `images` (uint8) and `labels` (int64, or None if unconditional) of a save_samples file.

    A file that is missing, not an .npz or without `images` raises a one-line DataError.
    """
    try:
        with np.load(path) as npz:
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz else None
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a samples file from the sample stage ({exc})") from None
    return images, labels


def load_generator(path: str | Path) -> tuple[nn.Module, GanSpec, dict]:
    """A trained generator from its weights file, the registry entry of its model, and its model config."""

    def build(config: dict) -> nn.Module:
        model = config["model"]
        return build_gan(model["name"], model["latent_dim"], model["label_embedding"])[0]

    generator, config = load_module(path, build)
    return generator, GAN_MODELS[config["model"]["name"]], config["model"]
