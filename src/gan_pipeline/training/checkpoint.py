"""Training checkpoints: everything a killed run needs to go on bit for bit, as data (never a pickle).

One safetensors file holds G, D (and G's EMA), both optimizers' tensors and the RNG states; its metadata
holds, as JSON, the position (step, epoch, batch within the epoch), the loss log, the optimizers' other
state, fp16's loss scale, the params that made it (`identity`) and the digest of the training code, from
which training.resume decides whether a run goes on from it.
Written atomically: a kill during the write leaves the previous checkpoint. The same state gives the same
bytes (the metadata keys are written in sorted order), so a re-run's checkpoint has the same md5.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from gan_pipeline.errors import DataError, first_line
from gan_pipeline.io import write_safetensors

FORMAT = "gan-pipeline-checkpoint/1"


@dataclass
class TrainState:
    """Where a run is, besides its modules, optimizers and RNGs."""

    step: int = 0  # D updates done
    epoch: int = 0  # epochs done
    batch: int = 0  # batches done in the current epoch
    history: list[dict[str, float]] = field(default_factory=list)  # logged rows so far
    window: list[dict[str, float]] = field(default_factory=list)  # step stats not yet logged
    collapse_streak: int = 0  # steps in a row that D has won totally
    stopped: bool = False  # an on_epoch hook ended the run before its last step (it is finished)
    seconds: float = 0.0  # time inside the training loop up to this step, over every process that trained it


@dataclass
class CheckpointedObjects:
    """The objects whose state a checkpoint holds."""

    generator: nn.Module
    discriminator: nn.Module
    ema: nn.Module | None  # the moving average of G, when train.ema_decay is set
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator  # the loop's explicit generator (permutations, z, labels, noise)
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scale, which adapts as training goes

    def modules(self) -> dict[str, nn.Module | None]:
        return {"generator": self.generator, "discriminator": self.discriminator, "ema": self.ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    identity: dict[str, Any]  # the params (and data hash) that made it
    total_steps: int  # the run's length when it was written
    extra: dict[str, Any]  # the caller's data, e.g. the MLflow run id
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total_steps or self.state.stopped

    def restore(self, objects: CheckpointedObjects) -> tuple[TrainState, torch.Tensor]:
        """Load every saved state into the fresh objects; return the position and the epoch-start RNG."""
        for name, module in objects.modules().items():
            if module is not None:
                module.load_state_dict(self._prefixed(name))
        for name, opt in objects.optimizers().items():
            opt.load_state_dict(_optimizer_from(self._prefixed(name), self.meta[name]))
            _in_parameter_layout(opt)
        if objects.scaler is not None and "grad_scaler" in self.meta:
            objects.scaler.load_state_dict(self.meta["grad_scaler"])
        objects.rng.set_state(self.tensors["rng/loop"])
        torch.set_rng_state(self.tensors["rng/torch"])
        version, internal, gauss = self.meta["python_random"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = self.meta["numpy_random"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        return self.state, self.tensors["rng/epoch_start"]

    def saved(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors saved under `name` (a module's state dict, or `extra_tensors` given that name)."""
        return self._prefixed(name)

    def _prefixed(self, name: str) -> dict[str, torch.Tensor]:
        prefix = f"{name}/"
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def save_checkpoint(
    path: str | Path,
    objects: CheckpointedObjects,
    *,
    identity: dict[str, Any],
    total_steps: int,
    state: TrainState,
    epoch_rng: torch.Tensor,
    training_code: str,
    extra: dict[str, Any] | None = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write the whole training state to `path` atomically (safetensors + JSON metadata).

    `epoch_rng` is the loop RNG's state when the current epoch began (its permutation is drawn from it);
    `training_code` is the digest of the code that trained it (`resume.training_code`); `extra_tensors`
    the caller's named state dicts (e.g. the monitor's best generator), read back by `Checkpoint.saved`.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, state_dict in (extra_tensors or {}).items():
        tensors.update({f"{name}/{k}": v for k, v in state_dict.items()})
    for name, module in objects.modules().items():
        if module is not None:
            tensors.update({f"{name}/{k}": v for k, v in module.state_dict().items()})
    meta: dict[str, Any] = {
        "state": asdict(state),
        "identity": identity,
        "total_steps": total_steps,
        "extra": extra or {},
        "training_code": training_code,
    }
    for name, opt in objects.optimizers().items():
        opt_tensors, meta[name] = _optimizer_to(opt)
        tensors.update({f"{name}/{k}": v for k, v in opt_tensors.items()})
    if objects.scaler is not None:
        meta["grad_scaler"] = objects.scaler.state_dict()  # floats and ints: scale, growth tracker, factors
    tensors["rng/loop"] = objects.rng.get_state()
    tensors["rng/epoch_start"] = epoch_rng
    tensors["rng/torch"] = torch.get_rng_state()
    meta["python_random"] = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta["numpy_random"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    write_safetensors(path, tensors, {"format": FORMAT, "meta": json.dumps(meta)})


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; anything else is refused, nothing is unpickled."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise DataError(f"{path}: not a gan-pipeline training checkpoint (no '{FORMAT}' marker)")
        tensors = load_file(str(path))
        meta = json.loads(metadata["meta"])
        state = TrainState(**meta["state"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        reason = first_line(exc)
        raise DataError(f"{path}: not a readable gan-pipeline training checkpoint ({reason})") from None
    return Checkpoint(
        path=path,
        state=state,
        identity=meta["identity"],
        total_steps=meta["total_steps"],
        extra=meta["extra"],
        tensors=tensors,
        meta=meta,
    )


def _in_parameter_layout(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout again.

    The file holds them contiguous, but channels_last weights (train.precision auto on conv models) have
    channels_last moments. torch's fused CPU Adam indexes the moments as if they had the parameter's
    strides: fed contiguous moments for a channels_last weight it silently mixes up elements (the weights
    drift from an uninterrupted run's within two steps); the foreach Adam copes with either layout.
    """
    for group in opt.param_groups:
        for param in group["params"]:
            state = opt.state.get(param, {})
            for name, value in state.items():
                is_moment = isinstance(value, torch.Tensor) and value.shape == param.shape
                if is_moment and value.stride() != param.stride():
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _optimizer_to(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into tensors (`state/<param>/<name>`) and JSON for the rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for index, values in sd["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{name}"] = value
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}
