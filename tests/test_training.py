"""Losses against hand-computed values; the step and the loop against their contracts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from configs import experiment_config

from gan_pipeline.config import ExperimentConfig
from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.models import build_gan
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.losses import Bce, d_loss_bce, g_loss_non_saturating, g_loss_saturating
from gan_pipeline.training.steps import StepBatch, frozen, gan_step


def test_losses_at_an_undecided_discriminator():
    zero = torch.zeros(4)
    assert d_loss_bce(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert d_loss_bce(zero, zero, real_label=0.9).item() == pytest.approx(2 * math.log(2))
    assert g_loss_non_saturating(zero).item() == pytest.approx(math.log(2))
    assert g_loss_saturating(zero).item() == pytest.approx(-math.log(2))


def test_one_sided_label_smoothing_targets_0_9_for_reals_only():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    p_real, p_fake = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    expected = -(0.9 * math.log(p_real) + 0.1 * math.log(1 - p_real)) - math.log(1 - p_fake)
    assert d_loss_bce(real, fake, real_label=0.9).item() == pytest.approx(expected)


def test_non_saturating_loss_keeps_its_gradient_when_d_rejects_fakes():
    logits = torch.tensor([-8.0], requires_grad=True)
    g_loss_non_saturating(logits).backward()
    strong = abs(logits.grad.item())
    logits.grad = None
    g_loss_saturating(logits).backward()
    weak = abs(logits.grad.item())
    assert strong > 0.99 and weak < 1e-3


def _step_setup(name="mlp_gan"):
    torch.manual_seed(0)
    generator, discriminator = build_gan(name, 8)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    return generator, discriminator, opt_g, opt_d


def test_d_steps_lower_d_loss_on_an_easy_case():
    generator, discriminator, opt_g, opt_d = _step_setup()
    real = torch.ones(32, 1, 28, 28) * 0.8  # a constant bright image, easy to tell from G's noise
    z = torch.randn(32, 8)
    batch = StepBatch(real, (), (), z, update_g=False)
    losses = [gan_step(generator, discriminator, opt_g, opt_d, batch, Bce())["loss_d"] for _ in range(20)]
    assert losses[-1] < 0.1 * losses[0]


def test_g_is_untouched_on_d_only_steps_and_moves_on_g_steps():
    generator, discriminator, opt_g, opt_d = _step_setup("cgan")
    before = [p.detach().clone() for p in generator.parameters()]
    labels = torch.arange(16) % 10
    models = (generator, discriminator, opt_g, opt_d)
    batch = StepBatch(torch.rand(16, 1, 28, 28), (labels,), (labels,), torch.randn(16, 8), update_g=False)
    stats = gan_step(*models, batch, Bce())
    assert math.isnan(stats["loss_g"])
    assert all(torch.equal(a, b) for a, b in zip(before, generator.parameters(), strict=True))
    stats = gan_step(*models, dataclasses.replace(batch, update_g=True), Bce())
    assert not math.isnan(stats["loss_g"])
    assert not all(torch.equal(a, b) for a, b in zip(before, generator.parameters(), strict=True))
    assert 0 < stats["d_real"] < 1 and 0 < stats["d_fake"] < 1


def test_g_step_gets_the_same_g_gradient_with_d_frozen_and_leaves_d_gradients_alone():
    generator, discriminator, _, _ = _step_setup("dcgan28")
    fake = generator(torch.randn(8, 8))

    def g_backward() -> list[torch.Tensor]:
        generator.zero_grad(set_to_none=True)
        g_loss_non_saturating(discriminator(fake)).backward(retain_graph=True)
        return [p.grad.clone() for p in generator.parameters()]

    reference = g_backward()  # the tutorial way: D's weight gradients are computed too
    assert all(p.grad is not None for p in discriminator.parameters())
    discriminator.zero_grad(set_to_none=True)
    with frozen(discriminator):
        assert not any(p.requires_grad for p in discriminator.parameters())
        frozen_grads = g_backward()
    assert all(torch.equal(a, b) for a, b in zip(reference, frozen_grads, strict=True))
    assert all(p.grad is None for p in discriminator.parameters())  # none computed, none thrown away
    assert all(p.requires_grad for p in discriminator.parameters())  # restored


def _tiny(name: str, **train) -> ExperimentConfig:
    return experiment_config(
        name,
        latent_dim=16,
        epochs=2,
        batch_size=32,
        log_every=2,
        **{"lr": 2e-4, "precision": "auto", **train},
    )


def _data(n=96, batch_size=32):
    g = torch.Generator().manual_seed(1)
    images = to_float(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    return TensorBatches(images, torch.arange(n) % 10, batch_size)


def test_loop_is_deterministic_for_a_seed_and_differs_across_seeds():
    batches = _data()
    a = train_gan(_tiny("dcgan28", seed=3), batches)
    b = train_gan(_tiny("dcgan28", seed=3), batches)
    c = train_gan(_tiny("dcgan28", seed=4), batches)
    for (key, wa), wb in zip(
        a.generator.state_dict().items(), b.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(wa, wb), key
    assert a.history == b.history
    assert not torch.equal(a.generator.net[0].weight, c.generator.net[0].weight)


def test_loop_logs_every_log_every_steps_through_the_callback():
    batches = _data()
    seen = []
    result = train_gan(_tiny("cgan"), batches, on_step=lambda step, row: seen.append((step, row)))
    assert result.steps == 2 * (96 // 32)
    assert [s for s, _ in seen] == [2, 4, 6]
    assert [r for _, r in seen] == result.history
    assert set(result.history[0]) == {"step", "epoch", "loss_d", "loss_g", "d_real", "d_fake"}
    assert result.images_per_s > 0


def test_d_steps_updates_g_every_kth_step_only():
    batches = _data()
    result = train_gan(_tiny("mlp_gan", d_steps=3), batches)
    assert math.isnan(result.history[0]["loss_g"])  # steps 1-2: D only
    assert not math.isnan(result.history[1]["loss_g"])  # steps 3-4: G updated at 3


def test_on_epoch_runs_after_each_epoch_and_can_stop_training():
    seen = []
    train_gan(
        _tiny("mlp_gan"), _data(), on_epoch=lambda epoch, step, g: seen.append((epoch, step, g.training))
    )
    assert seen == [(1, 3, True), (2, 6, True)]

    def stop(epoch, step, generator):
        raise RuntimeError(f"stop at {epoch}")

    with pytest.raises(RuntimeError, match="stop at 1"):
        train_gan(_tiny("mlp_gan"), _data(), on_epoch=stop)


def test_tensor_batches_cover_each_image_once_per_epoch_and_drop_the_partial_batch():
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    batches = TensorBatches(images, torch.arange(10), 3)
    seen = [b for b in batches.epoch(torch.Generator().manual_seed(0))]
    assert len(batches) == len(seen) == 3
    flat = torch.cat([x.flatten() for x, _ in seen])
    assert len(set(flat.tolist())) == 9
    assert all(torch.equal(x.flatten().long(), y) for x, y in seen)
