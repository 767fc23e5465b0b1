"""DCGAN for RGB faces (Radford et al.; the pytorch/examples layout, ngf = ndf = 64), one parametric
builder for two sizes: 64x64 (every layer k4) and the 96x96 of the anime-faces tutorial (chenyuntc's
pytorch-book), whose first D layer and last G layer are k5 s3 p1 instead, turning 32 into 96 and back."""

from __future__ import annotations

import torch
from torch import nn

from gan_pipeline.models.registry import register

WIDTH = 64  # ngf = ndf
# image size -> (kernel, stride, padding) of G's last and D's first layer, between 32x32 and the image
OUTER_LAYER = {64: (4, 2, 1), 96: (5, 3, 1)}


class FaceDcganGenerator(nn.Module):
    def __init__(self, latent_dim: int = 100, image_size: int = 64):
        super().__init__()
        kernel, stride, padding = OUTER_LAYER[image_size]
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, WIDTH * 8, kernel_size=4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(WIDTH * 8),
            nn.ReLU(),
            # (N, 512, 4, 4)
            nn.ConvTranspose2d(WIDTH * 8, WIDTH * 4, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(WIDTH * 4),
            nn.ReLU(),
            # (N, 256, 8, 8)
            nn.ConvTranspose2d(WIDTH * 4, WIDTH * 2, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(WIDTH * 2),
            nn.ReLU(),
            # (N, 128, 16, 16)
            nn.ConvTranspose2d(WIDTH * 2, WIDTH, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(WIDTH),
            nn.ReLU(),
            # (N, 64, 32, 32)
            nn.ConvTranspose2d(WIDTH, 3, kernel_size=kernel, stride=stride, padding=padding, bias=False),
            nn.Tanh(),
            # (N, 3, S, S) in [-1, 1]: 64 = (32 - 1) * 2 - 2 + 4, 96 = (32 - 1) * 3 - 2 + 5
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) -> (N, 3, S, S) in [-1, 1]."""
        return self.net(z[:, :, None, None])


class FaceDcganDiscriminator(nn.Module):
    def __init__(self, image_size: int = 64):
        super().__init__()
        kernel, stride, padding = OUTER_LAYER[image_size]
        self.net = nn.Sequential(
            nn.Conv2d(3, WIDTH, kernel_size=kernel, stride=stride, padding=padding, bias=False),
            nn.LeakyReLU(0.2),
            # (N, 64, 32, 32); no BatchNorm on D's input layer, as in DCGAN
            nn.Conv2d(WIDTH, WIDTH * 2, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(WIDTH * 2),
            nn.LeakyReLU(0.2),
            # (N, 128, 16, 16)
            nn.Conv2d(WIDTH * 2, WIDTH * 4, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(WIDTH * 4),
            nn.LeakyReLU(0.2),
            # (N, 256, 8, 8)
            nn.Conv2d(WIDTH * 4, WIDTH * 8, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(WIDTH * 8),
            nn.LeakyReLU(0.2),
            # (N, 512, 4, 4)
            nn.Conv2d(WIDTH * 8, 1, kernel_size=4, stride=1, padding=0, bias=False),
            # (N, 1, 1, 1) logits; DCGAN's final Sigmoid lives in the BCE-with-logits loss
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N,) logits."""
        return self.net(x).flatten()


for _size in OUTER_LAYER:
    register(
        f"dcgan{_size}",
        lambda latent_dim, n_classes, label_embedding, size=_size: (
            FaceDcganGenerator(latent_dim, size),
            FaceDcganDiscriminator(size),
        ),
    )
