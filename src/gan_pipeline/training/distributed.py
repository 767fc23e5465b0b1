"""Data-parallel training under torchrun: DistributedDataParallel, synchronized BatchNorm, one global batch.

`torchrun --nproc_per_node N stages/train.py ...` starts N processes (ranks) that set RANK, WORLD_SIZE and
LOCAL_RANK; `start()` joins them into one process group (gloo on the CPU, nccl on GPUs with each rank on
cuda:LOCAL_RANK). Without those variables, or with WORLD_SIZE 1, nothing here does anything and training is
the single-process training, bit for bit.

The global batch and why slicing is a DistributedSampler. Every rank seeds the loop's RNG with the same
`train.seed` and draws exactly what a single process draws: the epoch's permutation, each global batch of
`train.batch_size` images, its latent vectors and fake labels. Each rank then keeps its contiguous slice
of rows (`shard`): rank r of W gets rows r*B/W .. (r+1)*B/W - 1. The slices are disjoint and their union is
the single-process batch, which is what DistributedSampler guarantees (disjoint per-rank subsets of one
seeded permutation); slicing also keeps every rank's RNG in lockstep (all draw the same amounts), so no
rank ever needs a different permutation, and a checkpoint (one RNG state) resumes at any world size. Only
random draws made inside the step at the local batch size (label_noise's flips, the gradient penalty's
interpolation weights, DiffAugment's transforms) are not those of a single process: each rank draws them
for its own slice from the shared stream, so every slice gets the same values; they stay independent of
the data (the rows of each slice are a random draw) but such runs match a single-process run only in
distribution, not value.

The step under DDP. gan_step calls D on real and on fake.detach() before one backward: one backward after
several forwards is what DDP's reducer supports (each parameter's gradient is accumulated once over the
graph, then all-reduced). The generator step calls D again and backpropagates through it with D's
parameters frozen and the wrapper's gradient sync off (`steps.frozen`): no D gradients are computed or
all-reduced there, and G's gradients are all-reduced by G's own wrapper. Gradients are averaged over
ranks, and each rank's losses are means over its equal slice, so the averaged gradient is the gradient of
the global-batch mean loss, as in one process. BatchNorm layers become synchronized BatchNorm (statistics
over the global batch): torch's nn.SyncBatchNorm on CUDA, and `CpuSyncBatchNorm` on the CPU, where
nn.SyncBatchNorm refuses to run. Minibatch discrimination compares samples within a batch and is refused.

Stats: the step's loss_d, loss_g, d_real and d_fake are averaged over ranks (one small all-reduce per step)
so that every rank logs, checks for divergence and watches for collapse on the global values, and stops
together. Rank 0 alone writes checkpoints (the plain modules' state: resumable at any world size) and, in
the train stage, every output and everything MLflow sees. tests/test_training_distributed.py checks all of
this with 2 CPU processes: in float64 the weights match a single process to 1e-10.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as funcol
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from gan_pipeline.runtime import device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Replicas:
    """This process's place among the training processes; one process (world_size 1) makes every method an
    identity, so single-process training is untouched."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs and talks to MLflow (rank 0)."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch along dim 0 (the batch itself on one process)."""
        if not self.distributed:
            return batch
        if len(batch) % self.world_size:
            raise ValueError(f"a batch of {len(batch)} does not split over {self.world_size} processes")
        size = len(batch) // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """`module` with each BatchNorm layer swapped, in place, for a synchronized one sharing its parameters
        and buffers (same state_dict keys); refuses minibatch discrimination, which needs the whole batch."""
        if not self.distributed:
            return module
        from gan_pipeline.models.layers import MinibatchDiscrimination

        if any(isinstance(m, MinibatchDiscrimination) for m in module.modules()):
            raise ValueError("minibatch discrimination compares samples within one process's slice only")
        return _swap_batchnorm(module, _synchronized)

    def plain_batchnorm(self, *modules: nn.Module | None) -> None:
        """Swap synchronized BatchNorm layers back, in place, for the BatchNorm classes they replaced."""
        for module in modules:
            if module is not None:
                _swap_batchnorm(module, _plain)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to train with: DistributedDataParallel around it, or the module itself."""
        if not self.distributed:
            return module
        on_cuda = next(module.parameters()).device.type == "cuda"
        return DistributedDataParallel(module, device_ids=[torch.cuda.current_device()] if on_cuda else None)

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Each stat averaged over the ranks (NaN stays NaN), the same dict on every rank."""
        if not self.distributed:
            return stats
        values = torch.tensor(list(stats.values()), dtype=torch.float64, device=_collective_device())
        dist.all_reduce(values)
        return dict(zip(stats, (values / self.world_size).tolist(), strict=True))


def torchrun_replicas() -> Replicas:
    """The Replicas that torchrun's environment describes (one process when it is not set)."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return Replicas()
    rank, world_size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    return Replicas(rank, world_size, local_rank)


def start() -> Replicas:
    """Join torchrun's process group (nccl when training on CUDA, else gloo; each rank on cuda:LOCAL_RANK).
    Without torchrun, or with one process, nothing is started."""
    replicas = torchrun_replicas()
    if replicas.distributed and not dist.is_initialized():
        on_cuda = device().type == "cuda"
        if on_cuda:
            torch.cuda.set_device(replicas.local_rank)
        dist.init_process_group("nccl" if on_cuda else "gloo")
    return replicas


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Replicas:
    """The Replicas of the process group this process has joined; one process when it has joined none."""
    if not dist.is_initialized():
        return Replicas()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Replicas(dist.get_rank(), dist.get_world_size(), local_rank)


def _collective_device() -> torch.device:
    """Where the backend's tensors live: the rank's GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are over the global batch of all ranks, on any device.

    Per channel, two autograd-carrying all-reduces: of (sum, count), giving the global mean, then of the
    sum of squared deviations from it, giving the global (biased) variance, so that gradients flow to every
    rank's inputs as they would through BatchNorm on the concatenated batch. Running statistics are updated
    as BatchNorm does (momentum, or a cumulative average when momentum is None; unbiased variance). In eval
    mode, or with one process, it is BatchNorm.
    """

    def __init__(self, bn: _BatchNorm):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.plain_class = type(bn)
        # The same Parameter and buffer objects: optimizers and the EMA keep pointing at them.
        for name, value in [*bn.named_parameters(recurse=False), *bn.named_buffers(recurse=False)]:
            setattr(self, name, value)
        self.train(bn.training)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        self.plain_class._check_input_dim(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        totals = funcol.all_reduce(torch.cat([x.sum(dims), count]), "sum", dist.group.WORLD)
        n = totals[-1]
        mean = totals[:-1] / n
        centered = x - mean.view(shape)
        var = funcol.all_reduce((centered * centered).sum(dims), "sum", dist.group.WORLD) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / (n - 1), factor)
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _synchronized(bn: _BatchNorm) -> nn.Module:
    """A synchronized BatchNorm over `bn`'s parameters and buffers, remembering `bn`'s class."""
    if next(bn.buffers(), torch.empty(0)).device.type != "cuda":
        return CpuSyncBatchNorm(bn)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    sync.plain_class = type(bn)
    return sync


def _plain(sync: nn.Module) -> nn.Module:
    bn = sync.plain_class(sync.num_features, sync.eps, sync.momentum, sync.affine, sync.track_running_stats)
    for name, value in [*sync.named_parameters(recurse=False), *sync.named_buffers(recurse=False)]:
        setattr(bn, name, value)
    return bn.train(sync.training)


def _swap_batchnorm(module: nn.Module, swap) -> nn.Module:
    """Replace, in place, each BatchNorm (to synchronize) or synchronized BatchNorm (to make plain) below
    `module` by `swap(layer)`; their positions, and so parameter order and state_dict keys, are kept."""
    for name, child in module.named_children():
        synchronized = hasattr(child, "plain_class")
        if (swap is _plain and synchronized) or (swap is _synchronized and isinstance(child, _BatchNorm)
                                                  and not synchronized):  # fmt: skip
            setattr(module, name, swap(child))
        else:
            _swap_batchnorm(child, swap)
    return module
