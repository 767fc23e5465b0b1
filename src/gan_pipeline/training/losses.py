"""GAN losses as pure functions of D's logits, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

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


def noisy_targets(
    n: int, real_label: float, flip: float, rng: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """D's targets for n reals and n fakes, a fraction `flip` of each swapped at random (noisy labels).

    Reals are `real_label`, fakes 0; a flipped real becomes 0 and a flipped fake `real_label`. Draws from
    `rng` only when flip > 0, so runs without noisy labels consume no random numbers here.
    """
    real, fake = torch.full((n,), real_label), torch.zeros(n)
    if flip > 0:
        real[torch.rand(n, generator=rng) < flip] = 0.0
        fake[torch.rand(n, generator=rng) < flip] = real_label
    return real, fake


def d_loss_bce_targets(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: torch.Tensor, fake_target: torch.Tensor
) -> torch.Tensor:
    """BCE of D against per-sample targets (for noisy labels); d_loss_bce with constant targets."""
    return F.binary_cross_entropy_with_logits(real_logits, real_target) + F.binary_cross_entropy_with_logits(
        fake_logits, fake_target
    )


def d_loss_wasserstein(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The WGAN critic loss E[D(G(z))] - E[D(x)] (minimised by the critic; scores are unbounded)."""
    return fake_scores.mean() - real_scores.mean()


def g_loss_wasserstein(fake_scores: torch.Tensor) -> torch.Tensor:
    """The WGAN generator loss -E[D(G(z))]."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP's E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat uniformly between paired reals and fakes.

    Zero for a critic that is 1-Lipschitz with unit gradient norm everywhere (e.g. a linear map of unit
    norm); the graph is kept so that the penalty trains the critic.
    """
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=rng).to(real.device)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
