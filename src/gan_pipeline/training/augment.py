"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"): the same
random, differentiable transforms applied to the real and the fake images before every D call, in D's
update and in G's (G's gradient flows back through them), so that D cannot memorise the real images
and G is not pushed to make augmented-looking ones.

The transforms follow the paper's reference code (mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py),
which works on images in [-1, 1]; here they work in the model's value range (low, high) with the same
meaning: the reference's offsets scale by half the range's width and its zero fill becomes the range's
middle (0 in [-1, 1], 0.5 in [0, 1]; gray, not black). Each transform is a deterministic function of the
images and its parameters (`brightness(x, offset)`, `translate(x, shift_x, shift_y, fill)`, ...), and
`DiffAugment` draws those parameters from the step's torch.Generator on the CPU, one per image, then moves
them to the images' device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The reference's strengths: shifts of up to 1/8 of the size, a square of half the size cut out.
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def brightness(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images plus offset[n] (N,) on every pixel of image n."""
    return x + offset.view(-1, 1, 1, 1)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each pixel's channels spread around their mean by factor[n] (N,): 0 grays the image, 1 keeps it.

    On 1-channel images the mean is the pixel itself and the result is `x` exactly.
    """
    mean = x.mean(dim=1, keepdim=True)
    # (N, 1, H, W)
    return (x - mean) * factor.view(-1, 1, 1, 1) + mean


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image's pixels spread around the image's mean (over channels and pixels) by factor[n] (N,)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    # (N, 1, 1, 1)
    return (x - mean) * factor.view(-1, 1, 1, 1) + mean


def translate(x: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor, fill: float) -> torch.Tensor:
    """Image n moved right by shift_x[n] and down by shift_y[n] pixels ((N,) ints, negative: left, up);
    the pixels it uncovers are `fill`."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) - shift_y.view(-1, 1)
    # (N, H): the source row of each output row
    cols = torch.arange(w, device=x.device) - shift_x.view(-1, 1)
    # (N, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    # (N, H, W)
    batch = torch.arange(n, device=x.device).view(-1, 1, 1)
    moved = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    # (N, H, W, C)
    return torch.where(inside[:, None], moved.permute(0, 3, 1, 2), fill)


def cutout(
    x: torch.Tensor, center_x: torch.Tensor, center_y: torch.Tensor, size: tuple[int, int], fill: float
) -> torch.Tensor:
    """Image n with the (height, width) = `size` rectangle whose centre pixel is (center_y[n], center_x[n])
    set to `fill`, clipped to the image; the top-left corner is centre - size // 2, as in the reference."""
    _, _, h, w = x.shape
    top = center_y.view(-1, 1) - size[0] // 2
    left = center_x.view(-1, 1) - size[1] // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size[0])
    # (N, H)
    in_cols = (cols >= left) & (cols < left + size[1])
    # (N, W)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    # (N, H, W)
    return torch.where(hole[:, None], fill, x)


def _uniform(
    n: int, low: float, high: float, rng: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """(n,) draws from U(low, high), on the CPU generator `rng`, as `like`'s dtype and device."""
    return (torch.rand(n, generator=rng) * (high - low) + low).to(like.device, like.dtype)


def _integers(n: int, low: int, high: int, rng: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """(n,) ints in low..high (both included), on the CPU generator `rng`, on `like`'s device."""
    return torch.randint(low, high + 1, (n,), generator=rng).to(like.device)


class DiffAugment:
    """`policy`'s transforms (a comma list of color, translation, cutout, applied in that order) for
    images in `value_range`; `augment(x, rng)` draws a fresh set for each image of x from `rng`.

    color: brightness + U(-0.5, 0.5) (scaled to the range: +-0.25 of its width), saturation x U(0, 2)
    (skipped, drawing nothing, on 1-channel images, where it is the identity), contrast x U(0.5, 1.5);
    translation: by up to 1/8 of the height and width, filled with the range's middle; cutout: a square of
    half the height and width at a random centre, clipped to the image, set to the range's middle.
    """

    def __init__(self, policy: str, value_range: tuple[float, float]):
        names = [p.strip() for p in policy.split(",")]
        unknown = [p for p in names if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {unknown[0]!r} (expected {', '.join(POLICIES)})")
        self.policies = names
        low, high = value_range
        self.half_width, self.middle = (high - low) / 2, (high + low) / 2

    def __call__(self, x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        for name in self.policies:
            x = POLICIES[name](self, x, rng)
        return x

    def color(self, x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        n = x.size(0)
        x = brightness(x, _uniform(n, -0.5, 0.5, rng, x) * self.half_width)
        if x.size(1) > 1:
            x = saturation(x, _uniform(n, 0.0, 2.0, rng, x))
        return contrast(x, _uniform(n, 0.5, 1.5, rng, x))

    def translation(self, x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        max_y, max_x = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
        shift_x = _integers(n, -max_x, max_x, rng, x)
        shift_y = _integers(n, -max_y, max_y, rng, x)
        return translate(x, shift_x, shift_y, self.middle)

    def cutout(self, x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        size = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
        # The reference's centres: 0..h for an even side, 0..h - 1 for an odd one, so that the square at
        # either extreme overhangs its edge by as much.
        center_x = _integers(n, 0, w - size[1] % 2, rng, x)
        center_y = _integers(n, 0, h - size[0] % 2, rng, x)
        return cutout(x, center_x, center_y, size, self.middle)


POLICIES: dict[str, Callable[[DiffAugment, torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "color": DiffAugment.color,
    "translation": DiffAugment.translation,
    "cutout": DiffAugment.cutout,
}
