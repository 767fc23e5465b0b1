"""The losses and penalties of training/losses.py against hand-computed values: hinge, R3GAN's
relativistic pairing, the zero-centred R1 and R2 and their lazy schedule, and each in a gan_step (BCE's
values are in test_training.py, WGAN-GP's in test_training_tricks.py)."""

from __future__ import annotations

import math

import pytest
import torch
from configs import experiment_config, train_config
from torch import nn

from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.models import build_gan
from gan_pipeline.training import loop as loop_module
from gan_pipeline.training import losses
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.losses import (
    Bce,
    Hinge,
    RelativisticPairing,
    Side,
    WassersteinGp,
    ZeroCentredPenalty,
    loss_from_config,
    zero_centred_penalty,
)
from gan_pipeline.training.steps import StepBatch, gan_step


def _softplus(t: float) -> float:
    return math.log(1 + math.exp(t))


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # D: relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert Hinge().d_loss(real, fake, None).item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert Hinge().g_loss(fake, None).item() == pytest.approx(0.5 / 3)  # -mean(fake)
    # past both margins (reals >= 1, fakes <= -1) D's loss is 0
    assert Hinge().d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -4.0]), None).item() == 0.0


def test_relativistic_pairing_losses_by_hand_pair_the_ith_real_with_the_ith_fake():
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    loss = RelativisticPairing()
    # D: softplus(fake - real) = softplus(-1), softplus(2)
    # G: softplus(real - fake) = softplus(1), softplus(-2)
    assert loss.d_loss(real, fake, None).item() == pytest.approx((_softplus(-1) + _softplus(2)) / 2)
    assert loss.g_loss(fake, real).item() == pytest.approx((_softplus(1) + _softplus(-2)) / 2)
    # other pairs, other loss: (softplus(2 - 1) + softplus(0 - 0)) / 2
    assert loss.d_loss(real, fake.flip(0), None).item() == pytest.approx((_softplus(1) + math.log(2)) / 2)


def test_zero_centred_penalty_is_the_mean_squared_gradient_norm():
    w = torch.tensor([1.0, 2.0, 0.0, -2.0])  # ||w||^2 = 9
    x = torch.randn(5, 1, 2, 2)
    assert zero_centred_penalty(lambda v: v.flatten(1) @ w, x).item() == pytest.approx(9.0)
    # D(x) = sum(x^2): grad 2x, penalty mean_i 4 ||x_i||^2 (per sample, not the norm of the batch's sum)
    quadratic = zero_centred_penalty(lambda v: v.flatten(1).square().sum(1), x)
    assert quadratic.item() == pytest.approx(4 * x.flatten(1).square().sum(1).mean().item())


def test_zero_centred_penalty_of_half_precision_fakes_is_float32():
    w = torch.tensor([1.0, 2.0, 0.0, -2.0])
    fake = torch.randn(5, 4).to(torch.bfloat16)
    penalty = zero_centred_penalty(lambda v: v @ w.to(v.dtype), fake)
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(9.0)


def test_zero_centred_penalty_trains_d_and_not_g():
    d, g = nn.Linear(4, 1), nn.Linear(3, 4)
    fake = g(torch.randn(6, 3))
    zero_centred_penalty(d, fake).backward()
    assert torch.allclose(d.weight.grad, 2 * d.weight.detach())  # d ||w||^2 / dw
    assert g.weight.grad is None  # R2's fakes are detached from G


def test_r1_and_r2_are_weighted_gamma_over_2_times_the_interval_on_their_own_side():
    w_real, w_fake = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0])
    real = Side(torch.randn(4, 2), lambda v: v @ w_real)  # ||grad||^2 = 5
    fake = Side(torch.randn(4, 2), lambda v: v @ w_fake)  # ||grad||^2 = 9
    r1, r2 = ZeroCentredPenalty(0.5, 4, "real"), ZeroCentredPenalty(0.5, 4, "fake")
    assert r1(real, fake, None).item() == pytest.approx(5.0)
    assert r2(real, fake, None).item() == pytest.approx(9.0)
    assert r1.weight == r2.weight == pytest.approx(0.5 / 2 * 4)
    assert [s for s in range(10) if r1.due(s)] == [0, 4, 8]


def test_each_loss_carries_the_penalties_its_params_ask_for():
    r1 = ZeroCentredPenalty(2.0, 16, "real")
    assert Bce().penalties == () and Hinge().penalties == () and RelativisticPairing().penalties == ()
    assert Bce(r1_gamma=2.0, r1_every=16).penalties == (r1,)
    assert Hinge(r1_gamma=2.0, r1_every=16).penalties == (r1,)
    assert RelativisticPairing(2.0, 16).penalties == (r1, ZeroCentredPenalty(2.0, 16, "fake"))
    assert [type(p).__name__ for p in WassersteinGp().penalties] == ["GradientPenalty"]
    # D is built without BatchNorm exactly when a per-sample gradient penalty is on (or for rpgan's pairs)
    assert (Bce().critic, Bce(r1_gamma=1.0).critic, Hinge().critic, Hinge(r1_gamma=1.0).critic) == (
        False,
        True,
        False,
        True,
    )
    assert RelativisticPairing().critic and WassersteinGp().critic


def test_the_default_params_are_bce_without_a_penalty():
    loss = loss_from_config(train_config(epochs=1, lr=1e-3))
    assert loss == Bce(1.0, 0.0, "non_saturating", r1_gamma=0.0, r1_every=16)
    assert loss.penalties == () and not loss.critic and not loss.g_needs_real
    hinge = loss_from_config(train_config(epochs=1, lr=1e-3, loss="hinge", r1_gamma=0.1, r1_every=4))
    assert hinge == Hinge(r1_gamma=0.1, r1_every=4)
    rpgan = loss_from_config(train_config(epochs=1, lr=1e-3, loss="rpgan", r1_gamma=0.1))
    assert rpgan == RelativisticPairing(0.1, 16)


class _LinearD(nn.Module):
    """D(x, y) = x . w[y] (w[0] without labels): its gradient at any x is the label's row of weights."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        w = self.w[labels] if labels is not None else self.w[0]
        return (x.flatten(1) * w).sum(1, keepdim=True)  # (N, 1)


class _LinearG(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 4)

    def forward(self, z: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (N, 4)


def _frozen_step_losses(loss, steps: int, conditional: bool) -> list[float]:
    """loss_d of `steps` D steps (numbered from 0) at unchanging weights (SGD, lr 0)."""
    torch.manual_seed(0)
    # labels 0 for the reals and 1 for the fakes: ||w[0]||^2 = 9, ||w[1]||^2 = 4
    generator, discriminator = (
        _LinearG(),
        _LinearD(torch.tensor([[1.0, 2.0, 0.0, -2.0], [0.0, 2.0, 0.0, 0.0]])),
    )
    opt_g, opt_d = (
        torch.optim.SGD(generator.parameters(), lr=0.0),
        torch.optim.SGD(discriminator.parameters(), lr=0.0),
    )
    real, z = torch.rand(6, 4), torch.randn(6, 2)
    cond, fake_cond = (
        ((torch.zeros(6, dtype=torch.long),), (torch.ones(6, dtype=torch.long),)) if conditional else ((), ())
    )
    out = []
    for step in range(steps):
        batch = StepBatch(real, cond, fake_cond, z, update_g=False, step=step)
        out.append(gan_step(generator, discriminator, opt_g, opt_d, batch, loss)["loss_d"])
    return out


@pytest.mark.parametrize(
    ("lazy", "plain", "added"),
    [
        (Bce(r1_gamma=0.5, r1_every=3), Bce(), 0.5 / 2 * 3 * 9),  # R1 on the reals, D with the real labels
        (Hinge(r1_gamma=0.5, r1_every=3), Hinge(), 0.5 / 2 * 3 * 9),
        (RelativisticPairing(0.5, 3), RelativisticPairing(), 0.5 / 2 * 3 * (9 + 4)),  # R1 + R2 (fake labels)
    ],
)
def test_the_lazy_penalty_is_added_on_every_kth_d_step_only(lazy, plain, added):
    with_penalty = _frozen_step_losses(lazy, 7, conditional=True)
    without = _frozen_step_losses(plain, 7, conditional=True)
    differences = [a - b for a, b in zip(with_penalty, without, strict=True)]
    expected = [added if step % 3 == 0 else 0.0 for step in range(7)]
    assert differences == [pytest.approx(e, rel=1e-5, abs=1e-6) for e in expected]


def test_an_unconditional_d_takes_r1_and_r2_without_labels():
    with_penalty = _frozen_step_losses(RelativisticPairing(1.0, 1), 2, conditional=False)
    without = _frozen_step_losses(RelativisticPairing(), 2, conditional=False)
    differences = [a - b for a, b in zip(with_penalty, without, strict=True)]
    assert differences == [pytest.approx(9.0, rel=1e-5)] * 2  # (1/2)(9 + 9): both sides with w[0]


@pytest.mark.parametrize(
    "loss",
    [Hinge(), Hinge(r1_gamma=1.0, r1_every=2), Bce(r1_gamma=1.0, r1_every=2), RelativisticPairing(1.0, 2)],
    ids=repr,
)
def test_a_step_with_each_new_loss_trains_d_and_g_and_stays_finite(loss):
    torch.manual_seed(0)
    generator, discriminator = build_gan("dcgan28", 8, init_std=0.02, critic=loss.critic)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    d_before = [p.detach().clone() for p in discriminator.parameters()]
    g_before = [p.detach().clone() for p in generator.parameters()]
    batch = StepBatch(torch.rand(8, 1, 28, 28) * 2 - 1, (), (), torch.randn(8, 8))
    stats = gan_step(generator, discriminator, opt_g, opt_d, batch, loss)
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert not any(torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(g_before, generator.parameters(), strict=True))


def test_the_relativistic_g_loss_scores_the_reals_with_d_as_updated_in_the_same_step(monkeypatch):
    seen, pairing = [], losses.g_loss_relativistic
    monkeypatch.setattr(losses, "g_loss_relativistic", lambda f, r: seen.append(r.detach()) or pairing(f, r))
    torch.manual_seed(0)
    generator, discriminator = build_gan("mlp_gan", 8, critic=True)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        before = discriminator(real)
    batch = StepBatch(real, (), (), torch.randn(8, 8))
    gan_step(generator, discriminator, opt_g, opt_d, batch, RelativisticPairing())
    with torch.no_grad():
        after = discriminator(real)  # D as its step left it: G's step does not change D
    assert len(seen) == 1
    assert torch.equal(seen[0], after)
    assert not torch.allclose(seen[0], before)


def _batches(n: int = 32) -> TensorBatches:
    g = torch.Generator().manual_seed(1)
    images = to_float(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    return TensorBatches(images, torch.arange(n) % 10, 16)


def test_the_loop_numbers_d_steps_from_0_so_r1_is_due_on_steps_0_k_2k(monkeypatch):
    steps, taken = [], []
    step = loop_module.gan_step
    penalty = losses.zero_centred_penalty
    monkeypatch.setattr(loop_module, "gan_step", lambda *a, **k: steps.append(a[4].step) or step(*a, **k))
    monkeypatch.setattr(losses, "zero_centred_penalty", lambda *a: taken.append(steps[-1]) or penalty(*a))
    exp = experiment_config(
        "mlp_gan", latent_dim=8, epochs=4, lr=2e-4, batch_size=16, r1_gamma=0.1, r1_every=3
    )
    train_gan(exp, _batches())  # 2 batches an epoch: 8 steps
    assert steps == list(range(8))
    assert taken == [0, 3, 6]
