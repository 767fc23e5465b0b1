"""One GAN training step, read like the DCGAN reference: D on real, D on fake.detach(), G on the same fake."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from gan_pipeline.runtime import Precision
from gan_pipeline.training.losses import Critic, GanLoss, Side

FP32 = Precision("fp32", "cpu", channels_last=False)  # plain float32: autocast off, no scaling


@dataclass(frozen=True)
class StepBatch:
    """What one step trains on: the real batch and its labels, G's latents and the labels G is asked to draw.

    `cond` is () for unconditional models or (labels,) for the real batch; `fake_cond` likewise for G's
    labels. G is updated only when `update_g`. The step's random draws (noisy labels, the penalty's
    interpolation, the augmentation) come from `rng`. `step` counts the D steps before this one: the lazy
    penalties are due by it. `augment(images, rng)`, when set (DiffAugment), is applied to every image
    batch D sees, real or fake, in D's update and in G's: D is then D∘augment, for its stats and the
    penalties' critics too (their gradients are taken through the augmentation).
    """

    real: torch.Tensor
    cond: tuple[torch.Tensor, ...]
    fake_cond: tuple[torch.Tensor, ...]
    z: torch.Tensor
    update_g: bool = True
    rng: torch.Generator | None = None
    step: int = 0
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None

    def seen_by_d(self, images: torch.Tensor) -> torch.Tensor:
        """`images` as D sees them: augmented with fresh draws from `rng` when `augment` is set."""
        return images if self.augment is None else self.augment(images, self.rng)


def _full(logits: torch.Tensor) -> torch.Tensor:
    """Autocast's bf16/fp16 logits as float32 for the losses; float32 and float64 ones as they are."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


def _critic(
    discriminator: nn.Module,
    cond: tuple[torch.Tensor, ...],
    seen_by_d: Callable[[torch.Tensor], torch.Tensor],
) -> Critic:
    """D as a function of its images alone (as D sees them: `seen_by_d`), a conditional D with the labels
    `cond`."""
    return lambda x: _full(discriminator(seen_by_d(x), *cond))


@contextlib.contextmanager
def frozen(discriminator: nn.Module) -> Iterator[None]:
    """D's parameters out of autograd while G's loss backpropagates through D: the generator step needs
    only the gradient with respect to D's input, and D's weight gradients from that backward would be
    thrown away anyway (opt_d.zero_grad clears them before D's next update). Skipping them saves a third of
    D's weight-gradient convolutions per step and leaves every update bit-for-bit the same. Under DDP the
    wrapper must not wait for gradients that never come, so its gradient sync is off meanwhile."""
    params = [p for p in discriminator.parameters() if p.requires_grad]
    no_sync = getattr(discriminator, "no_sync", contextlib.nullcontext)
    try:
        for p in params:
            p.requires_grad_(False)
        with no_sync():
            yield
    finally:
        for p in params:
            p.requires_grad_(True)


def gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    batch: StepBatch,
    loss: GanLoss,
    grad_clip: float | None = None,
    precision: Precision | None = None,
) -> dict[str, float]:
    """Update D once (its loss plus the penalties due at `batch.step`) and, when `batch.update_g`, G once;
    return loss_d, loss_g, d_real and d_fake.

    d_real and d_fake are D's mean probabilities on the reals and the fakes; loss_g is NaN on steps that do
    not update G. `grad_clip` bounds each gradient's L2 norm. `precision` (default fp32) runs the forward
    passes in reduced precision; D's logits, the losses and the stats stay fp32.
    """
    precision = precision or FP32
    with precision.autocast():
        fake = generator(batch.z, *batch.fake_cond)
    opt_d.zero_grad(set_to_none=True)
    with precision.autocast():
        real_logits = _full(discriminator(batch.seen_by_d(batch.real), *batch.cond))
        fake_logits = _full(discriminator(batch.seen_by_d(fake.detach()), *batch.fake_cond))
        # the penalties due: after both forward passes (WGAN-GP's draws there), in autocast like them
        real_side = Side(batch.real, _critic(discriminator, batch.cond, batch.seen_by_d))
        fake_side = Side(fake.detach(), _critic(discriminator, batch.fake_cond, batch.seen_by_d))
        due = [p for p in loss.penalties if p.due(batch.step)]
        penalties = [(p.weight, p(real_side, fake_side, batch.rng)) for p in due]
    loss_d = loss.d_loss(real_logits, fake_logits, batch.rng)
    for weight, penalty in penalties:
        loss_d = loss_d + weight * penalty
    precision.backward(loss_d)
    _clip_and_step(discriminator, opt_d, grad_clip, precision)

    loss_g = torch.tensor(float("nan"))
    if batch.update_g:
        opt_g.zero_grad(set_to_none=True)
        with frozen(discriminator):
            with precision.autocast():
                fake_scores = _full(discriminator(batch.seen_by_d(fake), *batch.fake_cond))
                # The reals scored again, by D as it is now: a relativistic G loss pairs each fake with a real
                # under the D that scores the fake (the D step's real_logits are D's before its update).
                real_scores = None
                if loss.g_needs_real:
                    real_scores = _full(discriminator(batch.seen_by_d(batch.real), *batch.cond))
            loss_g = loss.g_loss(fake_scores, real_scores)
            precision.backward(loss_g)
        _clip_and_step(generator, opt_g, grad_clip, precision)
    precision.update()

    return {
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
    }


def _clip_and_step(
    module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None, precision: Precision
) -> None:
    """Clip the module's (unscaled) gradient to L2 norm `grad_clip`, if set, and take the optimizer's step."""
    if grad_clip is not None:
        precision.unscale(optimizer)
        nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    precision.step(optimizer)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BatchNorm statistics) are copied
    (the loop measures the EMA's own with standing_batchnorm_stats before it samples)."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


STANDING_STATS_SAMPLES = 2048  # latents that the EMA generator's BatchNorm statistics are measured on


@torch.no_grad()
def standing_batchnorm_stats(
    generator: nn.Module, latent_dim: int, n_classes: int | None, batch_size: int, seed: int
) -> None:
    """Measure `generator`'s BatchNorm statistics anew with its own weights, as BigGAN's "standing
    statistics" (Brock et al. 2019): the average of the batch statistics of STANDING_STATS_SAMPLES latents
    drawn with `seed`, in batches of the training's `batch_size` (conditional models: balanced labels of
    `n_classes`). The EMA's statistics copied from G belong to G's weights, not the EMA's; sampling with
    them in eval mode ruins the EMA's images. A function of the weights and the seed alone, so a resumed
    run measures what an unbroken one does; no-op for a generator without BatchNorm."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = generator.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    generator.train()
    rng = torch.Generator().manual_seed(seed)
    dev = next(generator.parameters()).device
    for start in range(0, STANDING_STATS_SAMPLES, batch_size):
        n = min(batch_size, STANDING_STATS_SAMPLES - start)
        z = torch.randn(n, latent_dim, generator=rng).to(dev)
        cond = ((torch.arange(start, start + n) % n_classes).to(dev),) if n_classes else ()
        generator(z, *cond)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    generator.train(was_training)


def ema_decay_at(step: int, decay: float, warmup_steps: int) -> float:
    """The EMA's decay at training step `step` (counted from 0): `decay`, ramped up over the first
    `warmup_steps` steps as in StyleGAN2-ADA (Karras et al. 2020, ema_rampup), whose EMA half-life grows in
    proportion to the steps done until it reaches the one of `decay`: decay ** (warmup_steps / step), 0 at
    step 0 (the EMA becomes G). A function of the step alone, so a resumed run ramps as an unbroken one."""
    if step >= warmup_steps:
        return decay
    return 0.0 if step == 0 else decay ** (warmup_steps / step)
