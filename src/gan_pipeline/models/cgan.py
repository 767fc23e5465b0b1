"""The conditional GAN of the tutorials: one hidden layer of 200 with LayerNorm, the digit label
concatenated to the input as a one-hot vector (or, as an option, a learned nn.Embedding)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gan_pipeline.models.registry import register

PIXELS = 28 * 28


class LabelCode(nn.Module):
    """Digit labels (N,) int64 -> (N, n_classes) float: a fixed one-hot code or a learned embedding."""

    def __init__(self, n_classes: int, kind: str):
        super().__init__()
        self.n_classes = n_classes
        self.embedding = nn.Embedding(n_classes, n_classes) if kind == "embedding" else None

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            return self.embedding(labels)
        return F.one_hot(labels, self.n_classes).float()


class CganGenerator(nn.Module):
    def __init__(self, latent_dim: int = 100, n_classes: int = 10, label_embedding: str = "one_hot"):
        super().__init__()
        self.label_code = LabelCode(n_classes, label_embedding)
        self.net = nn.Sequential(
            nn.Linear(latent_dim + n_classes, 200),
            nn.LeakyReLU(0.02),
            nn.LayerNorm(200),
            # (N, 200)
            nn.Linear(200, PIXELS),
            nn.Sigmoid(),
            # (N, 784) in [0, 1]
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim), (N,) int64 digits -> (N, 1, 28, 28) in [0, 1]."""
        return self.net(torch.cat([z, self.label_code(labels)], dim=1)).view(-1, 1, 28, 28)


class CganDiscriminator(nn.Module):
    def __init__(self, n_classes: int = 10, label_embedding: str = "one_hot"):
        super().__init__()
        self.label_code = LabelCode(n_classes, label_embedding)
        self.net = nn.Sequential(
            nn.Linear(PIXELS + n_classes, 200),
            nn.LeakyReLU(0.02),
            nn.LayerNorm(200),
            # (N, 200)
            nn.Linear(200, 1),
            # (N, 1) logits; the tutorial's Sigmoid lives in the BCE-with-logits loss
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [0, 1], (N,) int64 digits -> (N,) logits."""
        return self.net(torch.cat([x.flatten(1), self.label_code(labels)], dim=1)).squeeze(1)


register(
    "cgan",
    lambda latent_dim, n_classes, label_embedding: (
        CganGenerator(latent_dim, n_classes, label_embedding),
        CganDiscriminator(n_classes, label_embedding),
    ),
)
