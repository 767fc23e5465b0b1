"""Training checkpoints: everything a killed run needs to go on bit for bit, as data (never a pickle).

One safetensors file holds G, D (and G's EMA), both optimizers' tensors and the RNG states; its metadata
holds, as JSON, the position (step, epoch, batch within the epoch), the loss log, the optimizers' other
state, fp16's loss scale and the params that made it (`identity`), so that a checkpoint from other params
is refused by name.
Written atomically: a kill during the write leaves the previous checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gan_pipeline.errors import DataError, ParamsError
from gan_pipeline.io import atomic_path

FORMAT = "gan-pipeline-checkpoint/1"
PACKAGE = Path(__file__).resolve().parents[1]
# The modules whose code decides the trained weights (the train stage's code deps in dvc.yaml, less I/O).
TRAINING_CODE = ("models", "training", "runtime.py", "data/loading.py", "data/streaming.py")


@functools.cache
def training_code() -> str:
    """An MD5 over the source of TRAINING_CODE: a finished checkpoint made by other code is retrained."""
    digest = hashlib.md5()
    for entry in TRAINING_CODE:
        path = PACKAGE / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(PACKAGE)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


# Params that may differ between a checkpoint and the run that goes on from it: they change neither
# shapes nor the updates already made (a larger `epochs` extends a finished run).
RESUMABLE = ("train.epochs", "train.log_every", "train.checkpoint_every", "train.collapse_steps")


@dataclass
class TrainState:
    """Where a run is, besides its modules, optimizers and RNGs."""

    step: int = 0  # D updates done
    epoch: int = 0  # epochs done
    batch: int = 0  # batches done in the current epoch
    history: list[dict[str, float]] = field(default_factory=list)  # logged rows so far
    window: list[dict[str, float]] = field(default_factory=list)  # step stats not yet logged
    collapse_streak: int = 0  # steps in a row that D has won totally


@dataclass
class Trainables:
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
        return self.state.step >= self.total_steps

    def restore(self, parts: Trainables) -> tuple[TrainState, torch.Tensor]:
        """Load every saved state into the fresh objects; return the position and the epoch-start RNG."""
        for name, module in parts.modules().items():
            if module is not None:
                module.load_state_dict(self._prefixed(name))
        for name, opt in parts.optimizers().items():
            opt.load_state_dict(_optimizer_from(self._prefixed(name), self.meta[name]))
            _in_parameter_layout(opt)
        if parts.scaler is not None and "grad_scaler" in self.meta:
            parts.scaler.load_state_dict(self.meta["grad_scaler"])
        parts.rng.set_state(self.tensors["rng/loop"])
        torch.set_rng_state(self.tensors["rng/torch"])
        version, internal, gauss = self.meta["python_random"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = self.meta["numpy_random"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        return self.state, self.tensors["rng/epoch_start"]

    def _prefixed(self, name: str) -> dict[str, torch.Tensor]:
        prefix = f"{name}/"
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def save_checkpoint(
    path: str | Path,
    parts: Trainables,
    *,
    identity: dict[str, Any],
    total_steps: int,
    state: TrainState,
    epoch_rng: torch.Tensor,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the whole training state to `path` atomically (safetensors + JSON metadata).

    `epoch_rng` is the loop RNG's state when the current epoch began (its permutation is drawn from it).
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, module in parts.modules().items():
        if module is not None:
            tensors.update({f"{name}/{k}": v for k, v in module.state_dict().items()})
    meta: dict[str, Any] = {
        "state": asdict(state),
        "identity": identity,
        "total_steps": total_steps,
        "extra": extra or {},
        "training_code": training_code(),
    }
    for name, opt in parts.optimizers().items():
        opt_tensors, meta[name] = _optimizer_to(opt)
        tensors.update({f"{name}/{k}": v for k, v in opt_tensors.items()})
    if parts.scaler is not None:
        meta["grad_scaler"] = parts.scaler.state_dict()  # floats and ints: scale, growth tracker, factors
    tensors["rng/loop"] = parts.rng.get_state()
    tensors["rng/epoch_start"] = epoch_rng
    tensors["rng/torch"] = torch.get_rng_state()
    meta["python_random"] = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta["numpy_random"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta)})


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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable gan-pipeline training checkpoint ({first})") from None
    return Checkpoint(
        path=path,
        state=state,
        identity=meta["identity"],
        total_steps=meta["total_steps"],
        extra=meta["extra"],
        tensors=tensors,
        meta=meta,
    )


def differences(checkpoint: Checkpoint, identity: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, current value) for each identity key that differs, resumable ones aside."""
    # Model (shape) params first: they are the likeliest reason and the one to name.
    keys = sorted(set(checkpoint.identity) | set(identity), key=lambda k: (".model." not in f".{k}", k))
    return [
        (key, checkpoint.identity.get(key), identity.get(key))
        for key in keys
        if not key.endswith(RESUMABLE) and checkpoint.identity.get(key) != identity.get(key)
    ]


def resume_point(
    path: str | Path, identity: dict[str, Any], total_steps: int
) -> tuple[Checkpoint | None, str]:
    """The checkpoint to go on from (None: start afresh) and a line saying what was decided.

    A finished run with other params is replaced (its results are the stage's outputs already); an
    unfinished one with other params is refused, naming the first param that differs, since going on
    would mix two configurations and starting afresh would throw its work away. Likewise a finished run
    made by other training code (`training_code`: DVC re-runs the stage after a code change, and the old
    weights would come back unchanged) is retrained; an unfinished one goes on, with a note (the usual
    crash, fix, resume).
    """
    path = Path(path)
    if not path.exists():
        return None, f"no checkpoint at {path}: training from scratch"
    checkpoint = load_checkpoint(path)
    diff = differences(checkpoint, identity)
    if diff:
        key, old, new = diff[0]
        if checkpoint.finished:
            return None, f"{path}: a finished run with {key} {old!r} (now {new!r}): training from scratch"
        raise ParamsError(
            f"{path}: an unfinished run (step {checkpoint.state.step} of {checkpoint.total_steps}) was made "
            f"with {key} {old!r}, the params say {new!r}; restore that value to resume it, or delete the "
            f"checkpoint to start over"
        )
    same_code = checkpoint.meta.get("training_code") == training_code()
    if checkpoint.finished and not same_code:
        return None, f"{path}: a finished run made by other training code: training from scratch"
    if checkpoint.state.step > total_steps:
        epochs_key = next((k for k in identity if k.endswith("train.epochs")), "train.epochs")
        raise ParamsError(
            f"{path}: the checkpoint is at step {checkpoint.state.step}, past the {total_steps} steps of "
            f"{epochs_key} {identity.get(epochs_key)!r}; raise it, or delete the checkpoint to start over"
        )
    changed = "" if same_code else " (the training code has changed since it was written)"
    return checkpoint, f"resuming from {path} at step {checkpoint.state.step} of {total_steps}{changed}"


def _in_parameter_layout(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout again.

    The file holds them contiguous, but channels_last weights (train.precision auto on conv models) have
    channels_last moments. torch's fused CPU Adam indexes the moments as if they had the parameter's
    strides: fed contiguous moments for a channels_last weight it silently mixes up elements (measured:
    weights off by 3e-3 after two steps at lr 1e-3); the foreach Adam copes with either layout.
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
