"""What the rest of the pipeline knows of each GAN before building one: its name in params.yaml, whether it
is conditional, its images' shape and value range. Kept free of torch, so that reading params.yaml (every
stage does, the check and report stages nothing more) does not load the models; each model module registers
its builder under its card (`registry.register`), and a card without a builder is an error there."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCard:
    name: str
    conditional: bool  # G(z, labels) and D(x, labels) instead of G(z) and D(x)
    value_range: tuple[float, float]  # the range of G's output and of the real images D sees
    image_shape: tuple[int, int, int]  # (C, H, W)
    # True when the builder also takes the keyword `minibatch_kernels` (minibatch discrimination in D).
    minibatch: bool = False


FACE_DCGAN_SIZES = (64, 96)  # the image sizes of the face DCGAN (models/dcgan_faces.py: one per size)

MODEL_CARDS: dict[str, ModelCard] = {
    card.name: card
    for card in (
        ModelCard(
            "mlp_gan", conditional=False, value_range=(-1.0, 1.0), image_shape=(1, 28, 28), minibatch=True
        ),
        ModelCard("cgan", conditional=True, value_range=(0.0, 1.0), image_shape=(1, 28, 28)),
        ModelCard(
            "dcgan28", conditional=False, value_range=(-1.0, 1.0), image_shape=(1, 28, 28), minibatch=True
        ),
        ModelCard("convgan128", conditional=False, value_range=(0.0, 1.0), image_shape=(3, 128, 128)),
        *(
            ModelCard(f"dcgan{size}", conditional=False, value_range=(-1.0, 1.0), image_shape=(3, size, size))
            for size in FACE_DCGAN_SIZES
        ),
    )
}
