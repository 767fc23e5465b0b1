"""The model registry: each GAN is registered once under the name that params.yaml uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from gan_pipeline.models.layers import without_batchnorm


@dataclass(frozen=True)
class GanSpec:
    """What the rest of the pipeline needs to know about a registered GAN."""

    name: str
    # (latent_dim, n_classes, label_embedding) -> (generator, discriminator)
    build: Callable[[int, int, str], tuple[nn.Module, nn.Module]]
    conditional: bool  # G(z, labels) and D(x, labels) instead of G(z) and D(x)
    value_range: tuple[float, float]  # the range of G's output and of the real images D sees
    image_shape: tuple[int, int, int]  # (C, H, W)
    # True when `build` also takes the keyword `minibatch_kernels` (minibatch discrimination in D).
    minibatch: bool = False


GAN_MODELS: dict[str, GanSpec] = {}


def register(spec: GanSpec) -> GanSpec:
    if spec.name in GAN_MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    GAN_MODELS[spec.name] = spec
    return spec


def init_weights(module: nn.Module, std: float) -> None:
    """DCGAN init: conv/linear weights ~ N(0, std), biases 0; BatchNorm scale ~ N(1, std), shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def build_gan(
    name: str,
    latent_dim: int,
    label_embedding: str = "one_hot",
    init_std: float | None = None,
    minibatch_kernels: int = 0,
    critic: bool = False,
):
    """A fresh (generator, discriminator) for the registered `name`, optionally N(0, init_std)-initialised.

    `minibatch_kernels` > 0 adds minibatch discrimination to D (only for specs with `minibatch=True`;
    builders without it keep the plain (latent_dim, n_classes, label_embedding) signature). `critic` makes D
    a WGAN-GP critic: its BatchNorm layers become per-sample layer norms.
    """
    spec = GAN_MODELS[name]
    if minibatch_kernels:
        if not spec.minibatch:
            raise ValueError(f"model {name!r} has no minibatch discrimination")
        generator, discriminator = spec.build(
            latent_dim, 10, label_embedding, minibatch_kernels=minibatch_kernels
        )
    else:
        generator, discriminator = spec.build(latent_dim, 10, label_embedding)
    if critic:
        without_batchnorm(discriminator)
    if init_std is not None:
        init_weights(generator, init_std)
        init_weights(discriminator, init_std)
    return generator, discriminator
