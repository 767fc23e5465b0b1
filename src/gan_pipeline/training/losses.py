"""GAN losses as pure functions of D's logits, and `LOSSES`: each `train.loss` as one object that gives D's
loss, G's loss and an optional penalty, so that the step never branches on the loss's name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import torch
from torch.nn import functional as F

if TYPE_CHECKING:
    from gan_pipeline.config import TrainConfig

Critic = Callable[[torch.Tensor], torch.Tensor]


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
    critic: Critic,
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


@dataclass(frozen=True)
class GradientPenalty:
    """WGAN-GP's penalty on D's gradient between reals and fakes, added to D's loss times `weight`."""

    weight: float

    def __call__(
        self, critic: Critic, real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor:
        """The unweighted penalty (`gradient_penalty`), its interpolation weights drawn from `rng`."""
        return gradient_penalty(critic, real, fake, rng)


class GanLoss(Protocol):
    """What the step needs of a loss: D's and G's losses of D's fp32 logits, and the penalty, if any."""

    # D's outputs are logits of probabilities: D "winning totally" is meaningful and watched for.
    has_probabilities: ClassVar[bool]
    # D is built as a critic (no BatchNorm, see models), so that each sample's score is its own.
    critic: ClassVar[bool]

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> GanLoss: ...

    @property
    def penalty(self) -> GradientPenalty | None: ...

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor: ...

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Bce:
    """The tutorials' GAN loss: BCE of D on reals (target `real_label`) and fakes (target 0), a fraction
    `label_noise` of the targets flipped at random each step, and G's loss in its `g_variant`."""

    real_label: float = 1.0
    label_noise: float = 0.0
    g_variant: Literal["non_saturating", "saturating"] = "non_saturating"

    has_probabilities: ClassVar[bool] = True
    critic: ClassVar[bool] = False
    penalty: ClassVar[None] = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Bce:
        return cls(real_label=cfg.real_label, label_noise=cfg.label_noise, g_variant=cfg.g_loss)

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor:
        """D's loss; the noisy labels' flips are drawn from `rng` only when label_noise > 0."""
        if self.label_noise > 0:
            real_target, fake_target = noisy_targets(len(real_logits), self.real_label, self.label_noise, rng)
            dev = real_logits.device
            return d_loss_bce_targets(real_logits, fake_logits, real_target.to(dev), fake_target.to(dev))
        return d_loss_bce(real_logits, fake_logits, self.real_label)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return G_LOSSES[self.g_variant](fake_logits)


@dataclass(frozen=True)
class WassersteinGp:
    """WGAN-GP (Gulrajani et al. 2017): D is a critic with the Wasserstein loss plus `gp_lambda` times the
    gradient penalty."""

    gp_lambda: float = 10.0

    has_probabilities: ClassVar[bool] = False
    critic: ClassVar[bool] = True

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> WassersteinGp:
        return cls(gp_lambda=cfg.gp_lambda)

    @property
    def penalty(self) -> GradientPenalty:
        return GradientPenalty(self.gp_lambda)

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor:
        """The critic's loss without its penalty (the step adds that); draws nothing from `rng`."""
        return d_loss_wasserstein(real_logits, fake_logits)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return g_loss_wasserstein(fake_logits)


# train.loss -> its loss; a new loss is one entry here (and its name in config's train.loss).
LOSSES: dict[str, type[GanLoss]] = {"bce": Bce, "wgan_gp": WassersteinGp}


def loss_from_config(cfg: TrainConfig) -> GanLoss:
    """The loss `train.loss` names, with its settings from the train config."""
    return LOSSES[cfg.loss].from_config(cfg)
