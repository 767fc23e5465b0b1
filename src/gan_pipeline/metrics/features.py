"""The feature-module wrapper that FID and KID hand to torchmetrics."""

from __future__ import annotations

import torch
from torch import nn


class Float64Features(nn.Module):
    """Passes images straight to `features` and returns float64.

    torchmetrics computes FID in the dtype of the features and KID's kernel sums follow it, so float64
    here keeps both statistics in float64. An int `num_features` of `features` is passed on: FID's
    torchmetrics reads it (and probes the module with a 299x299 uint8 image without it); KID does not.
    """

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        num_features = getattr(features, "num_features", None)
        if isinstance(num_features, int):
            self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).double()
