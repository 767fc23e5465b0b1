"""Seeding, device and precision choice (autocast, channels_last, grad scaling): the one copy the whole
package uses."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import torch

from gan_pipeline.errors import ParamsError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with `seed` for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_threads(threads: int) -> None:
    """Run torch's CPU kernels on `threads` threads (params.yaml's runtime.threads). The thread count changes
    how float sums are split, so it decides the bits of every weight and metric: each stage that computes
    sets it from the params instead of inheriting whatever OMP_NUM_THREADS or the core count says."""
    torch.set_num_threads(threads)


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
    """Progress everywhere except where GAN_PIPELINE_PROGRESS=0 turns it off (tests)."""
    return os.environ.get("GAN_PIPELINE_PROGRESS", "1") != "0"


class LineProgress:
    """Progress for a log that is not a terminal (CI, `dvc repro > log`): one line on stderr at each tenth
    of the work done and at least every `every_s` seconds, instead of a bar's carriage-return redraws.
    The same calls as tqdm's that the package uses (update, set_postfix, close, a context manager)."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None):  # fmt: skip
        self.total, self.desc, self.unit, self.n = max(int(total), 0), desc, unit, initial
        self.every_s, self.clock, self.stream = every_s, clock, stream or sys.stderr
        self.start = self.last = clock()
        self.start_n = initial
        self.tenth = self._tenth()
        self.postfix = ""
        self.closed = False

    def _tenth(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth, now = self._tenth(), self.clock()
        if tenth > self.tenth or now - self.last >= self.every_s:
            self.tenth = tenth
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, now: float) -> None:
        self.last = now
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        done = f"{self.n}/{self.total} {self.unit}{share}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done}, {rate:,.1f} {self.unit}/s{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed and self.n > self.start_n and self.tenth < 10:
            self._line(self.clock())  # where it stopped, unless the 100% line said it
        self.closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True) -> Any:
    """The package's progress display of `total` units: tqdm's bar on a terminal, LineProgress's lines in
    a log (or everywhere with GAN_PIPELINE_PROGRESS=lines), nothing with GAN_PIPELINE_PROGRESS=0 or
    `enabled` False (e.g. the other processes of a distributed run)."""
    from tqdm import tqdm

    mode = os.environ.get("GAN_PIPELINE_PROGRESS", "1")
    if not enabled or mode == "0":
        return tqdm(total=total, disable=True)
    if mode != "lines" and sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit)
    return LineProgress(total, desc, unit, initial)


def progress_line(text: str) -> None:
    """One line on stderr saying what a long computation without a progress bar is doing, so that no stage
    is silent for long (off where progress bars are: GAN_PIPELINE_PROGRESS=0)."""
    if progress_enabled():
        print(text, file=sys.stderr, flush=True)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CONV = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)


class Precision:
    """How a GAN's forward passes run on a device: fp32, or autocast to bf16/fp16 (losses stay fp32), with
    channels_last weights and batches for conv models, and a gradient scaler for fp16. Built by
    `choose_precision`; `gan_step` uses `autocast`, `backward`, `unscale`, `step` and `update`."""

    def __init__(self, name: str, device_type: str, channels_last: bool):
        self.name, self.device_type, self.channels_last = name, device_type, channels_last
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        # fp16's 5 exponent bits underflow small gradients: scale the loss up, the gradients back down.
        self.scaler = torch.amp.GradScaler(device_type) if name == "fp16" else None

    def describe(self) -> str:
        """E.g. "bf16, channels_last" or "fp32"."""
        return self.name + (", channels_last" if self.channels_last else "")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the reduced precision; for fp32 nothing (so an outer autocast still applies)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def prepare(self, *modules: torch.nn.Module) -> None:
        """Put the modules' weights in the memory format the batches will have (once, before optimizers)."""
        if self.channels_last:
            for module in modules:
                module.to(memory_format=torch.channels_last)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """A (N, C, H, W) batch in the memory format of the weights."""
        if self.channels_last and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size (before clipping them)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), skipped by the scaler when a scaled gradient overflowed."""
        if self.scaler:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def update(self) -> None:
        """Once per training step, after every optimizer stepped: adapt the loss scale."""
        if self.scaler:
            self.scaler.update()


def fast_bf16_cpu() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), without which oneDNN
    emulates bf16 and autocast only slows training down."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _fp16_works_on_cpu() -> bool:
    """A tiny conv's forward and backward under CPU fp16 autocast (missing kernels in older torch)."""
    try:
        conv = torch.nn.Conv2d(1, 2, 3)
        with torch.autocast("cpu", dtype=torch.float16):
            out = conv(torch.ones(1, 1, 4, 4))
        out.float().sum().backward()
        return True
    except RuntimeError:
        return False


def choose_precision(
    requested: str, dev: torch.device, *modules: torch.nn.Module, key: str = "train.precision"
) -> Precision:
    """The Precision that runs `modules` on `dev` for a `train.precision` value (auto, fp32, bf16, fp16).

    auto picks the fastest that is safe. On CUDA: bf16 where supported, else fp16 with a grad scaler. On a
    CPU: bf16 + channels_last for models with conv layers on CPUs with native bf16, fp32 for the others
    (the MLP GANs' gain was within the noise) and on CPUs without native bf16; the measurements behind
    this rule (`benchmarks/train_throughput.py --precision`) and the quality after the same steps
    (`benchmarks/precision_quality.py`) are in docs/benchmarks.md. On CUDA, cudnn.benchmark is switched
    on (CUDA runs are not bit-reproducible anyway).
    """
    if requested not in PRECISIONS:
        raise ParamsError(f"{key}: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    conv = any(isinstance(m, _CONV) for module in modules for m in module.modules())
    cuda = dev.type == "cuda"
    if requested == "auto":
        if cuda:
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "bf16" if conv and fast_bf16_cpu() else "fp32"
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ParamsError(f"{key}: expected fp16, fp32 or auto on this GPU (it has no bf16), got 'bf16'")
    if requested == "fp16" and dev.type == "cpu" and not _fp16_works_on_cpu():
        raise ParamsError(
            f"{key}: expected auto, fp32 or bf16 on the CPU (this torch {torch.__version__} has no CPU fp16 "
            "autocast), got 'fp16'"
        )
    if cuda:
        torch.backends.cudnn.benchmark = True  # picks the fastest conv algorithm per shape, once
    return Precision(requested, dev.type, channels_last=conv and requested != "fp32")


def to_device(tensor: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A host tensor on `dev`; to a GPU through pinned memory, without blocking the host (the copy is
    ordered on the stream before the kernels that use it)."""
    if dev.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(dev, non_blocking=True)
    return tensor.to(dev)
