"""One GAN training step, read like the DCGAN reference: D on real, D on fake.detach(), G on the same fake."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from gan_pipeline.runtime import Amp
from gan_pipeline.training.losses import (
    d_loss_bce,
    d_loss_bce_targets,
    d_loss_wasserstein,
    g_loss_wasserstein,
    gradient_penalty,
    noisy_targets,
)

FP32 = Amp("fp32", "cpu", channels_last=False)  # plain float32: autocast off, no scaling


def _full(logits: torch.Tensor) -> torch.Tensor:
    """Autocast's bf16/fp16 logits as float32 for the losses; float32 and float64 ones as they are."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


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
    real: torch.Tensor,
    cond: tuple[torch.Tensor, ...],
    fake_cond: tuple[torch.Tensor, ...],
    z: torch.Tensor,
    *,
    real_label: float,
    g_loss: Callable[[torch.Tensor], torch.Tensor],
    update_g: bool,
    loss: str = "bce",
    gp_lambda: float = 10.0,
    label_noise: float = 0.0,
    grad_clip: float | None = None,
    rng: torch.Generator | None = None,
    amp: Amp | None = None,
) -> dict[str, float]:
    """Update D once and, when `update_g`, G once; return loss_d, loss_g, d_real, d_fake (D's mean probs).

    `cond` is () for unconditional models or (labels,) for the real batch; `fake_cond` likewise for the
    labels G is asked to draw. loss_g is NaN on steps that do not update G. `loss` "wgan_gp" makes D a
    critic (Wasserstein loss plus gp_lambda times the gradient penalty; `g_loss` and `real_label` are then
    unused); `label_noise` flips that fraction of D's BCE targets; `grad_clip` bounds each gradient's L2
    norm. Random draws (noisy labels, the penalty's interpolation) come from `rng`. `amp` (default fp32)
    runs the forward passes in reduced precision; D's logits, the losses and the stats stay fp32.
    """
    amp = amp or FP32
    with amp.autocast():
        fake = generator(z, *fake_cond)
    opt_d.zero_grad(set_to_none=True)
    with amp.autocast():
        real_logits = _full(discriminator(real, *cond))
        fake_logits = _full(discriminator(fake.detach(), *fake_cond))
        if loss == "wgan_gp":
            penalty = gradient_penalty(lambda x: _full(discriminator(x, *cond)), real, fake, rng)
    if loss == "wgan_gp":
        loss_d = d_loss_wasserstein(real_logits, fake_logits) + gp_lambda * penalty
    elif label_noise > 0:
        real_target, fake_target = noisy_targets(len(real_logits), real_label, label_noise, rng)
        loss_d = d_loss_bce_targets(
            real_logits, fake_logits, real_target.to(real_logits.device), fake_target.to(real_logits.device)
        )
    else:
        loss_d = d_loss_bce(real_logits, fake_logits, real_label)
    amp.backward(loss_d)
    if grad_clip is not None:
        amp.unscale(opt_d)
        nn.utils.clip_grad_norm_(discriminator.parameters(), grad_clip)
    amp.step(opt_d)

    loss_g = torch.tensor(float("nan"))
    if update_g:
        opt_g.zero_grad(set_to_none=True)
        with frozen(discriminator):
            with amp.autocast():
                fake_scores = _full(discriminator(fake, *fake_cond))
            loss_g = g_loss_wasserstein(fake_scores) if loss == "wgan_gp" else g_loss(fake_scores)
            amp.backward(loss_g)
        if grad_clip is not None:
            amp.unscale(opt_g)
            nn.utils.clip_grad_norm_(generator.parameters(), grad_clip)
        amp.step(opt_g)
    amp.update()

    return {
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
    }


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BatchNorm statistics) are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
