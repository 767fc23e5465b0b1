"""Kernel Inception Distance (Bińkowski et al. 2018) on the features of a module of our choosing.

KID is the unbiased estimate of the squared MMD between real and fake features under the polynomial kernel
k(x, y) = (x·y / d + 1)^3, averaged over random subsets. Unlike FID it is unbiased, but its subsets need
>= 1,000 samples to be stable (smaller ones vary widely from subset to subset). With the digit
classifier's features it is not Inception KID and is not comparable with it; record the feature module and
the subset size and count beside it.

The estimate is torchmetrics' `KernelInceptionDistance` computed the same way, operation for operation
(the same subsets from the same torch.randperm calls, the same kernel and sums), so its results are
bit-identical to it; the tests check that against torchmetrics itself, which is not imported here (it
costs every stage process ~4 s).
"""

from __future__ import annotations

import torch
from torch import nn

from gan_pipeline.runtime import module_device

KID_IMPLEMENTATION = (
    "torchmetrics KernelInceptionDistance with a custom feature module (float64 features, images fed "
    "unchanged); kernel (x.y/d + 1)^3; mean and population std over `subsets` subsets of "
    "min(subset_size, n_real, n_fake) drawn by torch.randperm after torch.manual_seed(seed)"
)


def kid(
    features_module: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
    batch_size: int = 500,
) -> tuple[float, float]:
    """(mean, std) of KID over `subsets` random subsets of min(subset_size, n_real, n_fake) per side.

    `real` and `fake` are images, (N, 1, 28, 28) in [-1, 1], fed unchanged in batches to `features_module`
    on the device of its parameters; it maps them to (N, D). The std is the population std over subsets
    (0 for one subset). The same `seed` draws the same subsets; the caller's random state is left as it was.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(
            f"KID needs subsets of at least 2 samples, got subset_size={subset_size}, "
            f"{len(real)} real and {len(fake)} fake samples"
        )
    dev = module_device(features_module)
    with torch.no_grad():
        sides = [
            torch.cat([features_module(batch.to(dev)).double() for batch in images.split(batch_size)])
            for images in (real, fake)
        ]
    # The subsets are drawn with torch.randperm from the global CPU generator (on any device).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = torch.stack([_subset_mmd2(*sides, size) for _ in range(subsets)])
    return scores.mean().item(), scores.std(unbiased=False).item()


def _subset_mmd2(real: torch.Tensor, fake: torch.Tensor, size: int) -> torch.Tensor:
    """Unbiased MMD^2 of one random subset of `size` per side (torchmetrics' draw order: real, then fake)."""
    x = real[torch.randperm(len(real))[:size]]
    y = fake[torch.randperm(len(fake))[:size]]
    gamma = 1.0 / x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T * gamma + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m = k_xx.shape[0]
    within_x = (k_xx.sum(dim=-1) - torch.diag(k_xx)).sum()
    within_y = (k_yy.sum(dim=-1) - torch.diag(k_yy)).sum()
    value = (within_x + within_y) / (m * (m - 1))
    value -= 2 * k_xy.sum(dim=0).sum() / (m**2)
    return value


def kid_unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of the full sets x (m, d) and y (n, d) under (x·y / d + 1)^3, in float64.

    The reference that kid() is tested against: one "subset", all samples, m and n >= 2 may differ.
    """
    x, y = x.double(), y.double()
    m, n, d = len(x), len(y), x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return (within_x + within_y - 2 * k_xy.mean()).item()
