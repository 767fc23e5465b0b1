"""Seeding and device choice: the one copy the whole package uses."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with `seed` for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def device() -> torch.device:
    """CUDA when present (set GAN_PIPELINE_DEVICE=cpu to refuse it), else the CPU."""
    wanted = os.environ.get("GAN_PIPELINE_DEVICE", "auto")
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without parameters)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def progress_enabled() -> bool:
    """Progress bars everywhere except where GAN_PIPELINE_PROGRESS=0 turns them off (tests, CI logs)."""
    return os.environ.get("GAN_PIPELINE_PROGRESS", "1") != "0"
