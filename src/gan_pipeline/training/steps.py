"""One GAN training step, read like the DCGAN reference: D on real, D on fake.detach(), G on the same fake."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gan_pipeline.training.losses import d_loss_bce


def gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    cond: tuple[torch.Tensor, ...],
    fake_cond: tuple[torch.Tensor, ...],
    z: torch.Tensor,
    *,
    real_label: float,
    g_loss: Callable[[torch.Tensor], torch.Tensor],
    update_g: bool,
) -> dict[str, float]:
    """Update D once and, when `update_g`, G once; return loss_d, loss_g, d_real, d_fake (D's mean probs).

    `cond` is () for unconditional models or (labels,) for the real batch; `fake_cond` likewise for the
    labels G is asked to draw. loss_g is NaN on steps that do not update G.
    """
    fake = generator(z, *fake_cond)

    opt_d.zero_grad(set_to_none=True)
    real_logits = discriminator(real, *cond)
    fake_logits = discriminator(fake.detach(), *fake_cond)
    loss_d = d_loss_bce(real_logits, fake_logits, real_label)
    loss_d.backward()
    opt_d.step()

    loss_g = torch.tensor(float("nan"))
    if update_g:
        opt_g.zero_grad(set_to_none=True)
        loss_g = g_loss(discriminator(fake, *fake_cond))
        loss_g.backward()
        opt_g.step()

    return {
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
    }
