"""Fixed-seed samples from a trained generator, and image grids."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from gan_pipeline.config import ModelConfig
from gan_pipeline.config.convert import convert_fields
from gan_pipeline.data.loading import to_uint8
from gan_pipeline.errors import DataError, ParamsError, first_line
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


def load_samples(
    path: str | Path, image_shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The `images` (uint8) and `labels` (int64, or None if unconditional) of a save_samples file.

    The images must be of a shape that a registered model makes ((N, 28, 28) digits, (N, S, S, 3) faces)
    and, if given, of `image_shape` per image (e.g. (28, 28) where digits are scored); labels are one digit
    0-9 per image. A file that is missing, truncated, corrupt, not an .npz or not such samples raises a
    one-line DataError.
    """
    try:
        with np.load(path) as npz:
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz else None
    except FileNotFoundError:
        raise DataError(f"{path}: samples file not found (run the sample stage first)") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a samples file from the sample stage ({first_line(exc)})") from None
    _check_samples(Path(path), images, labels, image_shape)
    return images, labels


def _check_samples(
    path: Path, images: np.ndarray, labels: np.ndarray | None, image_shape: tuple[int, ...] | None
) -> None:
    if images.dtype != np.uint8:
        raise DataError(
            f"{path}: 'images' has dtype {images.dtype}, expected uint8 (as the sample stage writes)"
        )
    # (C, H, W) as the models make them -> (H, W) or (H, W, 3) as the samples hold them
    made = {(h, w) if c == 1 else (h, w, c) for c, h, w in (s.image_shape for s in GAN_MODELS.values())}
    if images.ndim < 3 or images.shape[1:] not in made:
        shapes = ", ".join(
            str(("N", *shape)).replace("'", "")
            for shape in sorted(made, key=lambda shape: (len(shape), shape))
        )
        raise DataError(f"{path}: 'images' has shape {images.shape}, expected what a model makes: {shapes}")
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
        expected = str(("N", *image_shape)).replace("'", "")
        raise DataError(f"{path}: 'images' has shape {images.shape}, expected {expected} here")
    if len(images) == 0:
        raise DataError(f"{path}: no images (expected the samples of sample.n_samples)")
    if labels is None:
        return
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: 'labels' is {labels.dtype} {labels.shape}, expected integers ({len(images)},): one per "
            "image"
        )
    outside = np.flatnonzero((labels < 0) | (labels > 9))
    if len(outside):
        raise DataError(f"{path}: label {outside[0]} is {labels[outside[0]]}, expected a digit 0-9")


def load_generator(path: str | Path) -> tuple[nn.Module, GanSpec, dict]:
    """A trained generator from its weights file, the registry entry of its model, and its model config.

    A config without a `model` mapping, or whose model keys are not what the train stage writes (a
    registered name, latent_dim, label_embedding), is a one-line DataError."""

    def build(config: dict) -> nn.Module:
        model = _model_config(path, config)
        return build_gan(model["name"], model["latent_dim"], model["label_embedding"])[0]

    generator, config = load_module(path, build)
    return generator, GAN_MODELS[config["model"]["name"]], config["model"]


def _model_config(path: str | Path, config: dict) -> dict:
    """The `model` of a generator's config, checked like params.yaml's model section."""
    model = config.get("model")
    try:
        if not isinstance(model, dict):
            raise ParamsError(f"model: expected a mapping, got {model!r}")
        for key in ("name", "latent_dim", "label_embedding"):
            if key not in model:
                raise ParamsError(f"model.{key}: missing")
        convert_fields(ModelConfig, model, "model", partial=True)
        if model["name"] not in GAN_MODELS:
            raise ParamsError(
                f"model.name: expected one of {', '.join(sorted(GAN_MODELS))}, got {model['name']!r}"
            )
    except ParamsError as exc:
        raise DataError(f"{path}: its config metadata is not a generator's: {exc}") from None
    return model
