"""The digit classifier that judges generated samples, and its penultimate layer as FID features."""

from __future__ import annotations

import torch
from torch import nn


class DigitClassifier(nn.Module):
    """A small CNN for 28x28 grayscale digits in [-1, 1]: 10 logits, and `feature_dim` features."""

    def __init__(self, feature_dim: int = 128):
        super().__init__()
        self.feature_dim = feature_dim
        # BatchNorm (no conv bias: it would cancel) is what takes this past 95% test accuracy within the
        # ~125 Adam steps of the default config on 4,000 digits. In eval mode it is a fixed per-channel
        # affine map, so a sample's features never depend on the rest of its batch.
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # (N, 32, 14, 14)
            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # (N, 64, 7, 7)
            nn.Flatten(),
            # (N, 3136)
            nn.Linear(64 * 7 * 7, feature_dim),
            nn.ReLU(),
            # (N, feature_dim): the features that classifier FID compares
        )
        self.head = nn.Sequential(
            nn.Dropout(0.25),
            nn.Linear(feature_dim, 10),
            # (N, 10) logits
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, feature_dim) penultimate activations (>= 0)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, 10) logits."""
        return self.head(self.features(x))


class ClassifierFeatures(nn.Module):
    """A DigitClassifier's features as the feature module of FID, KID and PRDC: always eval, no grad,
    float64 (the precision their statistics are computed in).

    Wrapping puts the classifier in eval mode and keeps it there (dropout would make features random).
    """

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.feature_dim
        self.eval()

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) float in [-1, 1] -> (N, num_features) float64."""
        with torch.no_grad():
            return self.classifier.features(x.float()).double()
