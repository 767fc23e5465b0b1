"""GAN losses as pure functions of D's logits, chosen by name."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def d_loss_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """BCE of D on reals (target `real_label`, < 1 for one-sided smoothing) plus on fakes (target 0)."""
    real_target = torch.full_like(real_logits, real_label)
    return F.binary_cross_entropy_with_logits(real_logits, real_target) + F.binary_cross_entropy_with_logits(
        fake_logits, torch.zeros_like(fake_logits)
    )


def g_loss_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): strong gradients while D rejects the fakes (Goodfellow et al. 2014, sec. 3)."""
    return F.softplus(-fake_logits).mean()


def g_loss_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """log(1 - D(G(z))): the minimax loss, whose gradient vanishes while D rejects the fakes."""
    return -F.softplus(fake_logits).mean()


G_LOSSES = {"non_saturating": g_loss_non_saturating, "saturating": g_loss_saturating}
