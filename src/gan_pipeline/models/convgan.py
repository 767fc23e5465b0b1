"""The CelebA GAN of the "Make Your Own GAN" tutorial at 128x128: 8x8 kernels of stride 2, no padding,
in [0, 1] as the tutorial's images (pixels / 255). Trained batched here; the tutorial steps one image."""

from __future__ import annotations

import torch
from torch import nn

from gan_pipeline.models.registry import register

SEED_SHAPE = (3, 11, 11)  # G's linear layer output, reshaped; three stride-2 k8 layers grow it to 128


class ConvGan128Generator(nn.Module):
    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.seed = nn.Sequential(
            nn.Linear(latent_dim, 3 * 11 * 11),
            nn.LeakyReLU(0.2),
            # (N, 363), viewed as (N, 3, 11, 11)
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(3, 256, kernel_size=8, stride=2),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
            # (N, 256, 28, 28): (11 - 1) * 2 + 8
            nn.ConvTranspose2d(256, 256, kernel_size=8, stride=2),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
            # (N, 256, 62, 62): (28 - 1) * 2 + 8
            nn.ConvTranspose2d(256, 3, kernel_size=8, stride=2, padding=1),
            nn.BatchNorm2d(3),
            nn.Sigmoid(),
            # (N, 3, 128, 128) in [0, 1]: (62 - 1) * 2 - 2 + 8
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) -> (N, 3, 128, 128) in [0, 1]."""
        return self.net(self.seed(z).view(-1, *SEED_SHAPE))


class ConvGan128Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 256, kernel_size=8, stride=2),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
            # (N, 256, 61, 61): (128 - 8) // 2 + 1
            nn.Conv2d(256, 256, kernel_size=8, stride=2),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
            # (N, 256, 27, 27): (61 - 8) // 2 + 1
            nn.Conv2d(256, 3, kernel_size=8, stride=2),
            nn.LeakyReLU(0.2),
            # (N, 3, 10, 10): (27 - 8) // 2 + 1
            nn.Flatten(),
            # (N, 300)
            nn.Linear(3 * 10 * 10, 1),
            # (N, 1) logits; the tutorial's final Sigmoid lives in the BCE-with-logits loss
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 128, 128) in [0, 1] -> (N,) logits."""
        return self.net(x).squeeze(1)


register(
    "convgan128",
    lambda latent_dim, n_classes, label_embedding: (
        ConvGan128Generator(latent_dim),
        ConvGan128Discriminator(),
    ),
)
