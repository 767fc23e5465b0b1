"""Layers shared by several discriminators."""

from __future__ import annotations

import torch
from torch import nn

# Salimans et al. 2016 (and their improved-GAN code) use kernels of dimension 5.
MINIBATCH_KERNEL_DIM = 5


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, sec. 3.2): per sample, how close it is to the others.

    (N, in_features) -> (N, in_features + kernels): the input, then for each kernel b the sum over the other
    samples j of exp(-||M_i,b - M_j,b||_1), with M = x T reshaped to (N, kernels, kernel_dim). A collapsed
    batch (all samples alike) gives values near N - 1; a diverse one values near 0.
    """

    def __init__(self, in_features: int, kernels: int, kernel_dim: int = MINIBATCH_KERNEL_DIM):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        # A Linear without bias is the tensor T; being a Linear, it gets the model's N(0, init_std) init.
        self.projection = nn.Linear(in_features, kernels * kernel_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.projection(x).view(-1, self.kernels, self.kernel_dim)
        # (N, B, C)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(dim=3)
        # (N, N, B): L1 distance between samples i and j under kernel b
        closeness = torch.exp(-l1).sum(dim=1) - 1  # minus the sample's own exp(0)
        # (N, B)
        return torch.cat([x, closeness], dim=1)


def without_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with each BatchNorm replaced in place by a per-sample layer norm of the same width.

    A WGAN-GP critic must not use BatchNorm: the gradient penalty is taken per sample, and batch statistics
    make each output depend on the rest of the batch (Gulrajani et al. 2017, sec. 4, use layer norm).
    BatchNorm2d(C) becomes GroupNorm(1, C) (normalises over C, H, W), BatchNorm1d(C) LayerNorm(C).
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        elif isinstance(child, nn.BatchNorm1d):
            setattr(module, name, nn.LayerNorm(child.num_features))
        else:
            without_batchnorm(child)
    return module
