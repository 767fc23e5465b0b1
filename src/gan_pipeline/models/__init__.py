"""GAN models chosen by name: `GAN_MODELS[name].build(cfg)` gives a fresh (generator, discriminator).

Models are plain nn.Modules: they know nothing about optimizers, losses, logging, DVC or MLflow.
Discriminators return logits (no Sigmoid); losses apply the sigmoid inside BCE-with-logits.
"""

from __future__ import annotations

from gan_pipeline.models import cgan, convgan, dcgan, dcgan_faces, mlp_gan  # noqa: F401  (each registers itself on import)
from gan_pipeline.models.registry import GAN_MODELS, GanSpec, build_gan, init_weights

__all__ = ["GAN_MODELS", "GanSpec", "build_gan", "init_weights"]
