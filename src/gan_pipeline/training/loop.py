"""The GAN training loop: batched, seeded, one `on_step` callback for tracking."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from gan_pipeline.config import ExperimentConfig
from gan_pipeline.data.loading import BatchSource
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.runtime import device, progress_enabled, seed_everything
from gan_pipeline.training.losses import G_LOSSES
from gan_pipeline.training.steps import gan_step

OnStep = Callable[[int, dict[str, float]], None]
# (epoch, step, generator) after each epoch, G in train mode; may raise to stop training.
OnEpoch = Callable[[int, int, nn.Module], None]


@dataclass
class TrainResult:
    generator: nn.Module
    discriminator: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one row per logged step
    steps: int = 0  # D updates
    seconds: float = 0.0  # time inside the training loop
    images_per_s: float = 0.0  # real images through D per second


def train_gan(
    exp: ExperimentConfig,
    batches: BatchSource,
    on_step: OnStep | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Build the experiment's G and D and train them on `batches` (images in the model's value range).

    Every `train.log_every` steps (and at the last step) the window's mean stats go to `on_step(step, stats)`
    and into the result's history; after every epoch `on_epoch(epoch, step, generator)` runs. Deterministic
    on the CPU for a given `train.seed`.
    """
    cfg, spec = exp.train, GAN_MODELS[exp.model.name]
    rng = seed_everything(cfg.seed)
    generator, discriminator = build_gan(
        spec.name, exp.model.latent_dim, exp.model.label_embedding, cfg.init_std
    )
    dev = device()
    generator.to(dev).train()
    discriminator.to(dev).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)

    if batches.batch_size != cfg.batch_size:
        raise ValueError(f"batches of {batches.batch_size}, but train.batch_size is {cfg.batch_size}")
    total = cfg.epochs * len(batches)
    result = TrainResult(generator, discriminator)
    window: list[dict[str, float]] = []

    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"train {spec.name}", unit="step", disable=not progress_enabled())
    for epoch in range(cfg.epochs):
        for real, real_labels in batches.epoch(rng):
            z = torch.randn(cfg.batch_size, exp.model.latent_dim, generator=rng).to(dev)
            cond, fake_cond = (), ()
            if spec.conditional:
                cond = (real_labels,)
                fake_cond = (torch.randint(0, 10, (cfg.batch_size,), generator=rng).to(dev),)
            stats = gan_step(
                generator,
                discriminator,
                opt_g,
                opt_d,
                real,
                cond,
                fake_cond,
                z,
                real_label=cfg.real_label,
                g_loss=G_LOSSES[cfg.g_loss],
                update_g=(result.steps + 1) % cfg.d_steps == 0,
            )
            result.steps += 1
            window.append(stats)
            bar.update(1)
            if result.steps % cfg.log_every == 0 or result.steps == total:
                row = {"step": result.steps, "epoch": epoch + 1, **_mean(window)}
                window.clear()
                result.history.append(row)
                bar.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}")
                if on_step is not None:
                    on_step(result.steps, row)
        if on_epoch is not None:
            on_epoch(epoch + 1, result.steps, generator)
    bar.close()
    result.seconds = time.perf_counter() - start
    result.images_per_s = result.steps * cfg.batch_size / max(result.seconds, 1e-9)
    generator.eval()
    discriminator.eval()
    return result


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each stat over the rows, ignoring NaN (steps that did not update G)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out
