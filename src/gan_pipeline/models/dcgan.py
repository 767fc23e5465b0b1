"""DCGAN for 28x28 MNIST (Radford et al.): transposed convs up from a 4x4 seed, strided convs down."""

from __future__ import annotations

import torch
from torch import nn

from gan_pipeline.models.layers import MinibatchDiscrimination
from gan_pipeline.models.registry import register


class Dcgan28Generator(nn.Module):
    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 256, kernel_size=4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            # (N, 256, 4, 4)
            nn.ConvTranspose2d(256, 128, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            # (N, 128, 8, 8)
            nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            # (N, 64, 16, 16)
            nn.ConvTranspose2d(64, 1, kernel_size=4, stride=2, padding=3, bias=False),
            nn.Tanh(),
            # (N, 1, 28, 28): (16 - 1) * 2 - 2 * 3 + 4 = 28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) -> (N, 1, 28, 28) in [-1, 1]."""
        return self.net(z[:, :, None, None])


class Dcgan28Discriminator(nn.Module):
    def __init__(self, minibatch_kernels: int = 0):
        super().__init__()
        if minibatch_kernels:
            head = [
                nn.Flatten(),
                # (N, 2304)
                MinibatchDiscrimination(256 * 3 * 3, minibatch_kernels),
                # (N, 2304 + minibatch_kernels)
                nn.Linear(256 * 3 * 3 + minibatch_kernels, 1, bias=False),
                # (N, 1) logits
            ]
        else:  # the DCGAN head: a 3x3 conv over the 3x3 map, i.e. a linear layer on the 2304 features
            head = [
                nn.Conv2d(256, 1, kernel_size=3, stride=1, padding=0, bias=False),
                # (N, 1, 1, 1) logits
            ]
        self.net = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=4, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.2),
            # (N, 64, 14, 14); no BatchNorm on D's input layer, as in DCGAN
            nn.Conv2d(64, 128, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            # (N, 128, 7, 7)
            nn.Conv2d(128, 256, kernel_size=3, stride=2, padding=0, bias=False),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
            # (N, 256, 3, 3)
            *head,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N,) logits."""
        return self.net(x).flatten()


register(
    "dcgan28",
    lambda latent_dim, n_classes, label_embedding, minibatch_kernels=0: (
        Dcgan28Generator(latent_dim),
        Dcgan28Discriminator(minibatch_kernels),
    ),
)
