"""The tutorials' training tricks, each tested for its effect: gradient clipping, EMA of G (and its
warm-up), WGAN-GP, noisy labels, minibatch discrimination, TTUR and Adam's beta1 = 0 (label smoothing,
d_steps, N(0, 0.02) init and the G losses are in test_training.py and test_models.py, spectral norm in
test_models.py, DiffAugment in test_training_augment.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from configs import experiment_config, repo_params
from torch import nn
from torch.nn import functional as F

from gan_pipeline.config import parse_params
from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.errors import ParamsError
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.models.layers import MinibatchDiscrimination
from gan_pipeline.runtime import seed_everything
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.losses import Bce, WassersteinGp, gradient_penalty, noisy_targets
from gan_pipeline.training.setup import build_training
from gan_pipeline.training.steps import (
    STANDING_STATS_SAMPLES,
    StepBatch,
    ema_decay_at,
    ema_update,
    gan_step,
    standing_batchnorm_stats,
)


def _grad_norm(module: nn.Module) -> float:
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None]).norm().item()


@pytest.mark.parametrize("clip", [None, 0.01])
def test_grad_clip_bounds_the_gradient_norm_of_d_and_g(clip):
    torch.manual_seed(0)
    generator, discriminator = build_gan("mlp_gan", 8)
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.0)  # lr 0 keeps the grads for inspection
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=0.0)
    real, z = torch.rand(16, 1, 28, 28) * 2 - 1, torch.randn(16, 8)
    norms = []
    for update_g, module in ((False, discriminator), (True, generator)):  # G's step also reaches D's grads
        batch = StepBatch(real, (), (), z, update_g=update_g)
        gan_step(generator, discriminator, opt_g, opt_d, batch, Bce(), grad_clip=clip)
        norms.append(_grad_norm(module))
    if clip is None:
        assert min(norms) > 0.01  # so that the clipped case below is a real bound
    else:
        assert max(norms) <= 0.01 * (1 + 1e-5)
        assert min(norms) > 0.01 * 0.99  # clipped to the bound, not zeroed


def test_ema_update_is_the_analytic_moving_average():
    ema, model = nn.Linear(3, 2), nn.Linear(3, 2)
    start = [p.detach().clone() for p in ema.parameters()]
    for _ in range(5):
        ema_update(ema, model, 0.9)
    for e, s, p in zip(ema.parameters(), start, model.parameters(), strict=True):
        assert torch.allclose(e, p + (s - p) * 0.9**5, atol=1e-6)


def _one_batch_per_epoch(n=16):
    g = torch.Generator().manual_seed(1)
    images = to_float(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    return TensorBatches(images, torch.arange(n) % 10, n)


def test_the_loops_ema_of_g_equals_the_ema_of_gs_weights_over_its_steps():
    decay, steps = 0.7, 3

    def exp(epochs, ema_decay=None):
        return experiment_config(
            "mlp_gan",
            latent_dim=8,
            epochs=epochs,
            lr=2e-4,
            precision="auto",
            batch_size=16,
            ema_decay=ema_decay,
            init_std=None,
        )

    seed_everything(0)
    weights = [build_gan("mlp_gan", 8)[0].state_dict()]  # G at step 0, as the loop builds it
    weights += [train_gan(exp(k), _one_batch_per_epoch()).generator.state_dict() for k in range(1, steps + 1)]
    result = train_gan(exp(steps, decay), _one_batch_per_epoch())
    assert result.sampling_generator is result.ema
    for key, value in result.ema.state_dict().items():
        expected = weights[0][key] * decay**steps
        for k in range(1, steps + 1):
            expected = expected + (1 - decay) * decay ** (steps - k) * weights[k][key]
        assert torch.allclose(value, expected, atol=1e-6), key
    assert not torch.equal(result.ema.net[0].weight, result.generator.net[0].weight)


def test_gradient_penalty_is_zero_for_a_unit_norm_linear_critic_and_positive_otherwise():
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    w = torch.randn(16)
    unit = gradient_penalty(lambda x: x.flatten(1) @ (w / w.norm()), real, fake)
    double = gradient_penalty(lambda x: x.flatten(1) @ (2 * w / w.norm()), real, fake)
    quadratic = gradient_penalty(lambda x: (x.flatten(1) ** 2).sum(1), real, fake)
    assert unit.item() == pytest.approx(0.0, abs=1e-10)
    assert double.item() == pytest.approx(1.0)  # (||grad|| - 1)^2 = (2 - 1)^2
    assert quadratic.item() > 0


def test_wgan_gp_step_trains_a_critic_with_the_penalty_in_its_loss():
    torch.manual_seed(0)
    generator, discriminator = build_gan("dcgan28", 8)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.0, 0.9))
    real, z = torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 8)
    losses = {}
    for lam in (0.0, 10.0):
        state_d = {k: v.clone() for k, v in discriminator.state_dict().items()}
        batch = StepBatch(real, (), (), z, update_g=False, rng=torch.Generator().manual_seed(0))
        stats = gan_step(generator, discriminator, opt_g, opt_d, batch, WassersteinGp(gp_lambda=lam))
        discriminator.load_state_dict(state_d)
        losses[lam] = stats["loss_d"]
    assert losses[10.0] > losses[0.0]  # the penalty adds a positive term for a fresh critic


def test_a_wgan_gp_run_stays_finite():
    exp = experiment_config(
        "dcgan28",
        latent_dim=8,
        epochs=4,
        batch_size=16,
        loss="wgan_gp",
        d_steps=2,
        betas=(0.0, 0.9),
        lr=1e-4,
        precision="auto",
    )
    result = train_gan(exp, _one_batch_per_epoch(16))
    assert all(torch.isfinite(torch.tensor(row["loss_d"])) for row in result.history)


@pytest.mark.parametrize("name", ["dcgan28", "dcgan64", "convgan128"])
def test_a_wgan_gp_critic_scores_each_sample_on_its_own(name):
    """In training mode a BatchNorm D scores a sample differently when another sample of the batch changes;
    the critic that loss: wgan_gp builds (layer norm instead) does not, so the per-sample penalty holds."""
    spec = GAN_MODELS[name]
    torch.manual_seed(0)
    images = torch.rand(6, *spec.image_shape) * 2 - 1
    changed = images.clone()
    changed[1] = -changed[1]
    cond = (torch.arange(6) % 10,) if spec.conditional else ()
    for critic in (False, True):
        _, discriminator = build_gan(name, 8, init_std=0.02, critic=critic)
        discriminator.train()
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
        assert has_bn != critic
        with torch.no_grad():
            first = discriminator(images, *cond)[0], discriminator(changed, *cond)[0]
        assert torch.equal(*first) == critic, critic


def test_noisy_labels_flip_the_expected_fraction_of_targets():
    rng = torch.Generator().manual_seed(0)
    real, fake = noisy_targets(100_000, 0.9, 0.1, rng)
    assert real.unique().tolist() == [0.0, pytest.approx(0.9)]
    assert (real == 0).float().mean().item() == pytest.approx(0.1, abs=0.003)
    assert (fake > 0).float().mean().item() == pytest.approx(0.1, abs=0.003)
    state = rng.get_state()
    real, fake = noisy_targets(1000, 1.0, 0.0, rng)
    assert torch.equal(rng.get_state(), state)  # no noise: no random numbers drawn
    assert real.eq(1).all() and fake.eq(0).all()


@pytest.mark.parametrize("name", ["mlp_gan", "dcgan28"])
def test_minibatch_discrimination_makes_ds_output_depend_on_the_rest_of_the_batch(name):
    torch.manual_seed(0)
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    changed = images.clone()
    changed[1] = -changed[1]
    for kernels in (0, 8):
        _, discriminator = build_gan(name, 8, init_std=0.02, minibatch_kernels=kernels)
        discriminator.eval()  # BatchNorm in eval mode: no cross-sample dependence of its own
        with torch.no_grad():
            same = discriminator(images)[0] == discriminator(changed)[0]
        assert bool(same) == (kernels == 0), kernels


def test_minibatch_discrimination_tells_a_collapsed_batch_from_a_diverse_one():
    """Fakes are one sample repeated: each alone looks like a real sample, only the batch gives it away."""

    def train(kernels: int) -> float:
        torch.manual_seed(0)
        layers = [nn.Linear(4, 16), nn.LeakyReLU(0.2)]
        layers += [MinibatchDiscrimination(16, kernels)] if kernels else []
        d = nn.Sequential(*layers, nn.Linear(16 + kernels, 1))
        opt = torch.optim.Adam(d.parameters(), lr=1e-2)

        def batches():
            return torch.randn(16, 4), torch.randn(1, 4).expand(16, 4)

        for _ in range(300):
            real, fake = batches()
            loss = F.binary_cross_entropy_with_logits(d(real), torch.ones(16, 1))
            loss = loss + F.binary_cross_entropy_with_logits(d(fake), torch.zeros(16, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            right = [
                ((d(r) > 0).float().mean() + (d(f) < 0).float().mean()) / 2
                for r, f in (batches() for _ in range(50))
            ]
        return torch.stack(right).mean().item()

    assert train(kernels=5) > 0.95
    assert train(kernels=0) < 0.75


def test_minibatch_kernels_is_refused_for_a_model_without_it():
    with pytest.raises(ParamsError, match="experiments.x.model.minibatch_kernels: expected 0 for 'cgan'"):
        x = {
            "data": "mnist",
            "model": {"name": "cgan", "minibatch_kernels": 4},
            "train": {"epochs": 1, "lr": 2e-4},
        }
        parse_params({**repo_params(), "experiments": {"x": x}})


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # the first update copies G into the EMA
        (1, 0.904792147113709),  # 0.999 ** (100 / 1)
        (10, 0.9900448802097482),  # 0.999 ** (100 / 10)
        (50, 0.998001),  # 0.999 ** 2
        (100, 0.999),
        (1000, 0.999),
    ],
)
def test_the_ema_decay_during_the_warm_up_is_stylegan2_adas_ramp(step, expected):
    assert ema_decay_at(step, 0.999, 100) == pytest.approx(expected, rel=1e-12)


def test_the_ema_half_life_grows_in_proportion_to_the_steps_during_the_warm_up():
    half_life = lambda decay: math.log(0.5) / math.log(decay)  # noqa: E731 -- in steps
    for step in (1, 10, 37, 99):
        assert half_life(ema_decay_at(step, 0.999, 100)) == pytest.approx(half_life(0.999) * step / 100)


def test_without_a_warm_up_the_ema_decay_is_ema_decay_from_the_first_step():
    assert [ema_decay_at(step, 0.9, 0) for step in (0, 1, 1000)] == [0.9, 0.9, 0.9]


def test_the_loops_ema_with_a_warm_up_follows_the_ramped_decays():
    decays = [0.0, 0.49, 0.7]  # ema_decay 0.7, warm-up 2: steps 0, 1 (0.7 ** 2) and 2

    def exp(epochs, **ema):
        return experiment_config(
            "mlp_gan", latent_dim=8, epochs=epochs, lr=2e-4, batch_size=16, init_std=None, **ema
        )

    seed_everything(0)
    weights = [build_gan("mlp_gan", 8)[0].state_dict()]
    weights += [train_gan(exp(k), _one_batch_per_epoch()).generator.state_dict() for k in (1, 2, 3)]
    result = train_gan(exp(3, ema_decay=0.7, ema_warmup_steps=2), _one_batch_per_epoch())
    for key, value in result.ema.state_dict().items():
        expected = weights[0][key]
        for k, decay in enumerate(decays, start=1):
            expected = decay * expected + (1 - decay) * weights[k][key]
        assert torch.allclose(value, expected, atol=1e-6), key


def test_an_ema_warm_up_without_an_ema_is_refused_naming_both_keys():
    x = {
        "data": "mnist",
        "model": {"name": "dcgan28"},
        "train": {"epochs": 1, "lr": 2e-4, "ema_warmup_steps": 100},
    }
    message = (
        r"experiments\.x\.train\.ema_warmup_steps: expected 0 with train\.ema_decay null \(there is no EMA "
        r"to warm up\), got 100"
    )
    with pytest.raises(ParamsError, match=message):
        parse_params({**repo_params(), "experiments": {"x": x}})


@pytest.mark.parametrize(("lr_d", "d_lr"), [(4e-4, 4e-4), (None, 1e-4)])
def test_ttur_gives_d_its_own_learning_rate_and_adam_with_beta1_0_trains_a_step(lr_d, d_lr):
    """Adam's first step with beta1 = 0 moves each weight by lr * g / (|g| + 1e-8): by the lr itself where
    the gradient is well above 1e-8, so the largest change of G's and of D's weights is their lr."""
    exp = experiment_config(
        "dcgan28", latent_dim=8, epochs=1, lr=1e-4, lr_d=lr_d, betas=(0.0, 0.99), batch_size=8
    )
    setup = build_training(exp)
    objects = setup.objects
    modules = {"g": objects.generator, "d": objects.discriminator}
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in modules.items()}
    batch = StepBatch(torch.rand(8, 1, 28, 28) * 2 - 1, (), (), torch.randn(8, 8), rng=objects.rng)
    stats = gan_step(
        objects.generator, objects.discriminator, objects.opt_g, objects.opt_d, batch, setup.loss
    )
    assert all(math.isfinite(v) for v in stats.values())
    assert [group["lr"] for group in objects.opt_g.param_groups] == [1e-4]
    assert [group["lr"] for group in objects.opt_d.param_groups] == [d_lr]
    assert objects.opt_d.param_groups[0]["betas"] == (0.0, 0.99)
    for name, lr in (("g", 1e-4), ("d", d_lr)):
        moved = [
            (p - b).abs().max().item() for p, b in zip(modules[name].parameters(), before[name], strict=True)
        ]
        assert max(moved) == pytest.approx(lr, rel=1e-3), name


class _NormalisedLatents(nn.Module):
    """A "generator" whose output is its latents through BatchNorm: its statistics are the latents'."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm(z)


def test_standing_stats_are_the_mean_of_the_batch_statistics_of_the_seeded_latents():
    module = _NormalisedLatents(3).eval()
    module.norm.running_mean.fill_(5.0)  # stale statistics, as copied from another G
    module.norm.running_var.fill_(9.0)
    standing_batchnorm_stats(module, latent_dim=3, n_classes=None, batch_size=64, seed=7)
    z = torch.randn(STANDING_STATS_SAMPLES, 3, generator=torch.Generator().manual_seed(7))
    batches = z.split(64)
    assert torch.allclose(module.norm.running_mean, z.mean(0), atol=1e-6)  # equal batches: the overall mean
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(module.norm.running_var, expected_var, atol=1e-6)
    assert module.norm.num_batches_tracked.item() == len(batches)
    assert module.norm.momentum == 0.1 and not module.training  # put back as they were
    again = _NormalisedLatents(3)
    again.load_state_dict(module.state_dict())
    standing_batchnorm_stats(again, latent_dim=3, n_classes=None, batch_size=64, seed=7)
    assert torch.equal(again.norm.running_var, module.norm.running_var)  # a function of weights and seed


def test_the_loops_ema_samples_with_batchnorm_statistics_of_its_own_weights():
    cfg = experiment_config("dcgan28", latent_dim=8, epochs=3, lr=2e-4, batch_size=16, ema_decay=0.5)
    result = train_gan(cfg, _one_batch_per_epoch())
    norm = result.ema.net[1]
    own = copy.deepcopy(result.ema)
    standing_batchnorm_stats(own, latent_dim=8, n_classes=None, batch_size=16, seed=cfg.train.seed)
    assert torch.equal(norm.running_mean, own.net[1].running_mean)
    assert torch.equal(norm.running_var, own.net[1].running_var)
    assert not torch.allclose(norm.running_mean, result.generator.net[1].running_mean)  # not G's copied
