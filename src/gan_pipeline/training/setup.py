"""What a training run is built from, by the experiment's config: G and D on the device (BatchNorm
synchronized across processes), the precision, G's EMA, both optimizers, the loss, the loop's RNG and
DiffAugment's transforms."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gan_pipeline.config import ExperimentConfig
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.runtime import Precision, choose_precision, device, seed_everything
from gan_pipeline.training import distributed
from gan_pipeline.training.augment import DiffAugment
from gan_pipeline.training.checkpoint import CheckpointedObjects
from gan_pipeline.training.distributed import Replicas
from gan_pipeline.training.losses import GanLoss, loss_from_config
from gan_pipeline.training.steps import standing_batchnorm_stats


@dataclass
class TrainingSetup:
    """A run's fresh objects: what a checkpoint holds, and how the steps run."""

    objects: CheckpointedObjects
    precision: Precision
    replicas: Replicas  # this process's place among the training processes (one: no-ops)
    loss: GanLoss
    device: torch.device
    augment: DiffAugment | None = None  # train.diffaugment's transforms of D's inputs; None: off
    ema_stats: Callable[[nn.Module], None] | None = None  # measures the EMA's own BatchNorm statistics

    def refresh_ema(self) -> None:
        """Give the EMA generator (if any) BatchNorm statistics of its own weights, before it samples."""
        if self.objects.ema is not None and self.ema_stats is not None:
            self.ema_stats(self.objects.ema)

    def step_modules(self, compile: bool) -> tuple[nn.Module, nn.Module]:
        """G and D as the step calls them: wrapped for DDP in a process group, compiled when `compile`."""
        step_g = self.replicas.wrap(self.objects.generator)
        step_d = self.replicas.wrap(self.objects.discriminator)
        if compile:
            step_g, step_d = torch.compile(step_g), torch.compile(step_d)
        return step_g, step_d


def build_training(exp: ExperimentConfig) -> TrainingSetup:
    """Seed everything from train.seed and build the run's objects, in an order that fixes their weights."""
    cfg, spec = exp.train, GAN_MODELS[exp.model.name]
    loss = loss_from_config(cfg)
    rng = seed_everything(cfg.seed)
    generator, discriminator = build_gan(
        spec.name,
        exp.model.latent_dim,
        exp.model.label_embedding,
        cfg.init_std,
        exp.model.minibatch_kernels,
        critic=loss.critic,
        spectral_norm=exp.model.spectral_norm,
    )
    dev = device()
    generator.to(dev).train()
    discriminator.to(dev).train()
    replicas = distributed.current()
    replicas.sync_batchnorm(generator)
    replicas.sync_batchnorm(discriminator)
    precision = choose_precision(cfg.precision, dev, generator, discriminator)
    precision.prepare(generator, discriminator)
    ema = copy.deepcopy(generator).requires_grad_(False) if cfg.ema_decay is not None else None
    # fused: one kernel per parameter group instead of a chain of foreach ops (docs/benchmarks.md: its gain).
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas, fused=True)
    lr_d = cfg.lr_d if cfg.lr_d is not None else cfg.lr  # TTUR: D's own learning rate
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=cfg.betas, fused=True)
    objects = CheckpointedObjects(generator, discriminator, ema, opt_g, opt_d, rng, precision.scaler)
    augment = DiffAugment(cfg.diffaugment, spec.value_range) if cfg.diffaugment is not None else None
    ema_stats = functools.partial(
        standing_batchnorm_stats,
        latent_dim=exp.model.latent_dim,
        n_classes=10 if spec.conditional else None,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    return TrainingSetup(objects, precision, replicas, loss, dev, augment, ema_stats)
