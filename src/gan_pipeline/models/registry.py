"""The model registry: each GAN is registered once under the name that params.yaml uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrizations

from gan_pipeline.model_cards import MODEL_CARDS, ModelCard
from gan_pipeline.models.layers import without_batchnorm


@dataclass(frozen=True)
class GanSpec:
    """A registered GAN: its card (name, conditional, image shape, value range) and its builder."""

    card: ModelCard
    # (latent_dim, n_classes, label_embedding) -> (generator, discriminator)
    build: Callable[[int, int, str], tuple[nn.Module, nn.Module]]

    name = property(lambda self: self.card.name)
    conditional = property(lambda self: self.card.conditional)
    value_range = property(lambda self: self.card.value_range)
    image_shape = property(lambda self: self.card.image_shape)
    minibatch = property(lambda self: self.card.minibatch)


GAN_MODELS: dict[str, GanSpec] = {}


def register(name: str, build: Callable[..., tuple[nn.Module, nn.Module]]) -> GanSpec:
    """Register the builder of the GAN whose card is MODEL_CARDS[name]."""
    if name not in MODEL_CARDS:
        raise ValueError(f"model {name!r} has no card in model_cards.py")
    spec = GanSpec(MODEL_CARDS[name], build)
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


def spectral_normed(module: nn.Module) -> nn.Module:
    """`module` with the weight of each of its Conv2d and Linear layers spectrally normalized in place
    (Miyato et al. 2018): divided by its largest singular value, estimated by one power iteration per forward
    pass in training mode (torch.nn.utils.parametrizations.spectral_norm, 15 iterations at registration).

    The weight then lives on as `<layer>.parametrizations.weight.original`, and the power iteration's
    vectors `_u` and `_v` are buffers: the state dict (and so a checkpoint) holds them. BatchNorm, layer
    norms and embeddings are left as they are. Call it after any weight init: an init of `layer.weight`
    afterwards would write to a computed tensor, not to the parameter.
    """
    for layer in list(module.modules()):
        if isinstance(layer, nn.Conv2d | nn.Linear):
            parametrizations.spectral_norm(layer)
    return module


def build_gan(
    name: str,
    latent_dim: int,
    label_embedding: str = "one_hot",
    init_std: float | None = None,
    minibatch_kernels: int = 0,
    critic: bool = False,
    spectral_norm: bool = False,
):
    """A fresh (generator, discriminator) for the registered `name`, optionally N(0, init_std)-initialised.

    `minibatch_kernels` > 0 adds minibatch discrimination to D (only for specs with `minibatch=True`;
    builders without it keep the plain (latent_dim, n_classes, label_embedding) signature). `critic` makes D
    a WGAN-GP critic: its BatchNorm layers become per-sample layer norms. `spectral_norm` spectrally
    normalizes D's conv and linear weights (`spectral_normed`; its random start vectors come from torch's
    global RNG, after the init).
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
    if spectral_norm:
        spectral_normed(discriminator)
    return generator, discriminator
