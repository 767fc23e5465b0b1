"""GAN losses as pure functions of D's logits, and `LOSSES`: each `train.loss` as one object that gives D's
loss, G's loss and the penalties on D, so that the step never branches on the loss's name."""

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
    """The WGAN generator loss -E[D(G(z))] (also the hinge loss's generator loss)."""
    return -fake_scores.mean()


def d_loss_hinge(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """D's hinge loss E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]: zero once reals score >= 1 and fakes <= -1."""
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def d_loss_relativistic(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """D's relativistic pairing loss E[softplus(D(G(z_i)) - D(x_i))]: each real should outscore its fake."""
    return F.softplus(fake_scores - real_scores).mean()


def g_loss_relativistic(fake_scores: torch.Tensor, real_scores: torch.Tensor) -> torch.Tensor:
    """G's relativistic pairing loss E[softplus(D(x_i) - D(G(z_i)))]: each fake should outscore its real."""
    return F.softplus(real_scores - fake_scores).mean()


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


def zero_centred_penalty(critic: Critic, images: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||_2^2] at `images`: R1 at reals, R2 at fakes (Mescheder et al. 2018).

    `images` are detached first, so that R2 at fakes trains D alone; the graph is kept so that the penalty
    trains D. A linear D(x) = w.x has the penalty ||w||^2. Autocast's bf16/fp16 fakes give a float32 penalty.
    """
    x = images.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    grad = grad.flatten(1)
    if grad.dtype in (torch.bfloat16, torch.float16):
        grad = grad.float()
    return grad.square().sum(dim=1).mean()


@dataclass(frozen=True)
class Side:
    """One side of D's step: its images (the reals, or the fakes detached from G) and D on them (a
    conditional D with that side's labels)."""

    images: torch.Tensor
    critic: Critic


class Penalty(Protocol):
    """A penalty on D's gradient: on the D steps it is `due` at, the step adds `weight` times its value."""

    @property
    def weight(self) -> float: ...

    def due(self, step: int) -> bool:
        """Whether D's step `step` (0-based: the D steps done before it) takes the penalty: a function of
        the count alone, so that a resumed run takes it on the same steps."""
        ...

    def __call__(self, real: Side, fake: Side, rng: torch.Generator | None) -> torch.Tensor:
        """The unweighted penalty."""
        ...


@dataclass(frozen=True)
class GradientPenalty:
    """WGAN-GP's penalty on D's gradient between reals and fakes, added to D's loss times `weight` on every
    step."""

    weight: float

    def due(self, step: int) -> bool:
        return True

    def __call__(self, real: Side, fake: Side, rng: torch.Generator | None) -> torch.Tensor:
        """`gradient_penalty` of D on the real labels, its interpolation weights drawn from `rng`."""
        return gradient_penalty(real.critic, real.images, fake.images, rng)


@dataclass(frozen=True)
class ZeroCentredPenalty:
    """(gamma / 2) * E[||grad_x D(x)||^2] on the reals (R1) or on the fakes (R2), lazily: taken on every
    `every`-th D step (the first included) and then times `every`, so that its weight on average is
    gamma / 2 at 1/every of the cost (StyleGAN2's lazy regularisation, Karras et al. 2020)."""

    gamma: float
    every: int
    on: Literal["real", "fake"]

    @property
    def weight(self) -> float:
        return self.gamma / 2 * self.every

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, real: Side, fake: Side, rng: torch.Generator | None) -> torch.Tensor:
        """`zero_centred_penalty` on this penalty's side; draws nothing from `rng`."""
        side = real if self.on == "real" else fake
        return zero_centred_penalty(side.critic, side.images)


def zero_centred_penalties(
    gamma: float, every: int, on: tuple[Literal["real", "fake"], ...]
) -> tuple[ZeroCentredPenalty, ...]:
    """R1 (on "real") and/or R2 (on "fake") of weight gamma / 2 every `every` D steps; none if gamma is 0."""
    return tuple(ZeroCentredPenalty(gamma, every, side) for side in on) if gamma > 0 else ()


class GanLoss(Protocol):
    """What the step needs of a loss: D's and G's losses of D's fp32 logits, and the penalties on D."""

    # D's outputs are logits of probabilities: D "winning totally" is meaningful and watched for.
    has_probabilities: ClassVar[bool]
    # G's loss compares D's scores of the fakes with its scores of the reals (a relativistic loss): the step
    # then gives g_loss D's scores of the real batch too.
    g_needs_real: ClassVar[bool]

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> GanLoss: ...

    @property
    def critic(self) -> bool:
        """D is built as a critic (no BatchNorm, see models), so that each sample's score is its own: the
        gradient penalties are taken per sample."""
        ...

    @property
    def penalties(self) -> tuple[Penalty, ...]: ...

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor: ...

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        """G's loss; `real_logits` are D's scores of the reals when `g_needs_real`, else None."""
        ...


class LazyR1:
    """For a loss with an optional lazy R1 (fields `r1_gamma`, `r1_every`): with R1 on, D is a critic (its
    per-sample gradients are the penalty's) and the penalty is R1 on the reals."""

    r1_gamma: float
    r1_every: int

    @property
    def critic(self) -> bool:
        return self.r1_gamma > 0

    @property
    def penalties(self) -> tuple[Penalty, ...]:
        return zero_centred_penalties(self.r1_gamma, self.r1_every, ("real",))


@dataclass(frozen=True)
class Bce(LazyR1):
    """The tutorials' GAN loss: BCE of D on reals (target `real_label`) and fakes (target 0), a fraction
    `label_noise` of the targets flipped at random each step, G's loss in its `g_variant`, and R1 of weight
    `r1_gamma` / 2 every `r1_every` D steps (0: none)."""

    real_label: float = 1.0
    label_noise: float = 0.0
    g_variant: Literal["non_saturating", "saturating"] = "non_saturating"
    r1_gamma: float = 0.0
    r1_every: int = 1

    has_probabilities: ClassVar[bool] = True
    g_needs_real: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Bce:
        return cls(
            real_label=cfg.real_label,
            label_noise=cfg.label_noise,
            g_variant=cfg.g_loss,
            r1_gamma=cfg.r1_gamma,
            r1_every=cfg.r1_every,
        )

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor:
        """D's loss; the noisy labels' flips are drawn from `rng` only when label_noise > 0."""
        if self.label_noise > 0:
            real_target, fake_target = noisy_targets(len(real_logits), self.real_label, self.label_noise, rng)
            dev = real_logits.device
            return d_loss_bce_targets(real_logits, fake_logits, real_target.to(dev), fake_target.to(dev))
        return d_loss_bce(real_logits, fake_logits, self.real_label)

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        return G_LOSSES[self.g_variant](fake_logits)


@dataclass(frozen=True)
class WassersteinGp:
    """WGAN-GP (Gulrajani et al. 2017): D is a critic with the Wasserstein loss plus `gp_lambda` times the
    gradient penalty."""

    gp_lambda: float = 10.0

    has_probabilities: ClassVar[bool] = False
    g_needs_real: ClassVar[bool] = False
    critic: ClassVar[bool] = True

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> WassersteinGp:
        return cls(gp_lambda=cfg.gp_lambda)

    @property
    def penalties(self) -> tuple[Penalty, ...]:
        return (GradientPenalty(self.gp_lambda),)

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor:
        """The critic's loss without its penalty (the step adds that); draws nothing from `rng`."""
        return d_loss_wasserstein(real_logits, fake_logits)

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        return g_loss_wasserstein(fake_logits)


@dataclass(frozen=True)
class Hinge(LazyR1):
    """The hinge loss (Lim & Ye 2017; SN-GAN, Miyato et al. 2018): D's `d_loss_hinge`, G's -E[D(G(z))],
    and R1 of weight `r1_gamma` / 2 every `r1_every` D steps (0: none)."""

    r1_gamma: float = 0.0
    r1_every: int = 1

    has_probabilities: ClassVar[bool] = False  # D's scores are margins, not logits of probabilities
    g_needs_real: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Hinge:
        return cls(r1_gamma=cfg.r1_gamma, r1_every=cfg.r1_every)

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor:
        """D's hinge loss; draws nothing from `rng`."""
        return d_loss_hinge(real_logits, fake_logits)

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        return g_loss_wasserstein(fake_logits)  # the same -E[D(G(z))]


@dataclass(frozen=True)
class RelativisticPairing:
    """R3GAN's loss (Huang et al. 2024, "The GAN is dead; long live the GAN!"): the relativistic pairing
    losses `d_loss_relativistic` and `g_loss_relativistic` on the i-th real and the i-th fake, with R1 on the
    reals and R2 on the fakes, each of weight `gamma` / 2, every `every` D steps (gamma 0: none)."""

    gamma: float = 0.0
    every: int = 1

    has_probabilities: ClassVar[bool] = False  # only differences of D's scores mean anything
    g_needs_real: ClassVar[bool] = True
    # R3GAN's D has no normalisation; BatchNorm would make each fake's score, and so its pair's margin,
    # depend on the rest of the batch.
    critic: ClassVar[bool] = True

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> RelativisticPairing:
        return cls(gamma=cfg.r1_gamma, every=cfg.r1_every)

    @property
    def penalties(self) -> tuple[Penalty, ...]:
        return zero_centred_penalties(self.gamma, self.every, ("real", "fake"))

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, rng: torch.Generator | None
    ) -> torch.Tensor:
        """D's pairing loss; draws nothing from `rng`."""
        return d_loss_relativistic(real_logits, fake_logits)

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        """G's pairing loss against D's scores of the reals (required: g_needs_real)."""
        assert real_logits is not None, "the relativistic G loss needs D's scores of the reals"
        return g_loss_relativistic(fake_logits, real_logits)


# train.loss -> its loss; a new loss is one entry here (and its name in config's train.loss).
LOSSES: dict[str, type[GanLoss]] = {
    "bce": Bce,
    "wgan_gp": WassersteinGp,
    "hinge": Hinge,
    "rpgan": RelativisticPairing,
}


def loss_from_config(cfg: TrainConfig) -> GanLoss:
    """The loss `train.loss` names, with its settings from the train config."""
    return LOSSES[cfg.loss].from_config(cfg)
