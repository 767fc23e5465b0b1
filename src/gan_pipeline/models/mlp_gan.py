"""The MLP GAN of the MNIST tutorials: fully connected G and D on flattened 28x28 images."""

from __future__ import annotations

import torch
from torch import nn

from gan_pipeline.models.layers import MinibatchDiscrimination
from gan_pipeline.models.registry import register

PIXELS = 28 * 28


class MlpGenerator(nn.Module):
    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 256),
            nn.LeakyReLU(0.2),
            # (N, 256)
            nn.Linear(256, 512),
            nn.LeakyReLU(0.2),
            # (N, 512)
            nn.Linear(512, 1024),
            nn.LeakyReLU(0.2),
            # (N, 1024)
            nn.Linear(1024, PIXELS),
            nn.Tanh(),
            # (N, 784) in [-1, 1]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) -> (N, 1, 28, 28) in [-1, 1]."""
        return self.net(z).view(-1, 1, 28, 28)


class MlpDiscriminator(nn.Module):
    def __init__(self, minibatch_kernels: int = 0):
        super().__init__()
        mbd = [MinibatchDiscrimination(256, minibatch_kernels)] if minibatch_kernels else []
        self.net = nn.Sequential(
            nn.Linear(PIXELS, 1024),
            nn.LeakyReLU(0.2),
            # (N, 1024)
            nn.Linear(1024, 512),
            nn.LeakyReLU(0.2),
            # (N, 512)
            nn.Linear(512, 256),
            nn.LeakyReLU(0.2),
            # (N, 256)
            *mbd,
            # (N, 256 + minibatch_kernels)
            nn.Linear(256 + minibatch_kernels, 1),
            # (N, 1) logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> (N,) logits."""
        return self.net(x.flatten(1)).squeeze(1)


register(
    "mlp_gan",
    lambda latent_dim, n_classes, label_embedding, minibatch_kernels=0: (
        MlpGenerator(latent_dim),
        MlpDiscriminator(minibatch_kernels),
    ),
)
