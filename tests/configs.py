"""Config builders for tests and benchmarks: the repository's params.yaml values, with overrides.

The schema's dataclasses have no defaults (params.yaml holds every value), so code that needs a config
outside the pipeline builds it here: `experiment_config("dcgan28", latent_dim=8, epochs=7, lr=2e-4)` is
model_defaults, train_defaults and monitor_defaults with model.name dcgan28 and the overrides. Overrides
are checked like params.yaml values; a key in none of the sections is a TypeError.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from gan_pipeline.config import (
    ClassifierConfig,
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    FaceDataConfig,
    ModelConfig,
    MonitorConfig,
    SampleConfig,
    TrainConfig,
)
from gan_pipeline.config.convert import build
from gan_pipeline.config.load import DEFAULTS

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def enable_faces(params_text: str) -> str:
    """params.yaml after the documented change that enables faces: the commented blocks that begin with
    `# celeba64:` (in datasets) and `# dcgan64:` (in experiments and in references) uncommented."""
    out, in_block = [], False
    for line in params_text.splitlines():
        starts = line.startswith(("  # celeba64:", "  # dcgan64:"))
        in_block = starts or (in_block and line.startswith("  # "))
        out.append("  " + line[4:] if in_block else line)
    return "\n".join(out) + "\n"


def repo_params(faces: bool = False) -> dict:
    """The repository's params.yaml as a mapping (with faces enabled if `faces`)."""
    text = PARAMS.read_text()
    return yaml.safe_load(enable_faces(text) if faces else text)


def _section(cls: type, raw: dict, key: str, overrides: dict[str, Any]) -> Any:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    return build(cls, {**raw, **overrides}, key)


def experiment_config(
    model: str, monitor: dict | None = None, data: str = "mnist", **overrides: Any
) -> ExperimentConfig:
    """The defaults sections with model.name `model`, then `overrides` (keys of ModelConfig or
    TrainConfig; `seed` is train.seed) and `monitor` (keys of MonitorConfig). train_defaults has no
    epochs and lr (each experiment sets them), so they are overrides here."""
    raw = repo_params()
    sections: dict[str, dict[str, Any]] = {
        "model": {"name": model},
        "train": {},
        "monitor": dict(monitor or {}),
    }
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, value in overrides.items():
        sections["model" if name in model_keys else "train"][name] = value
    built = {
        section: _section(cls, raw.get(defaults, {}), defaults, sections[section])
        for section, (defaults, cls) in DEFAULTS.items()
    }
    return ExperimentConfig(data=data, **built)


def data_config(**overrides: Any) -> DataConfig:
    """params.yaml's `datasets.mnist` with `overrides`."""
    return _section(DataConfig, repo_params()["datasets"]["mnist"], "datasets.mnist", overrides)


def face_data_config(dataset: str = "celeba64", **overrides: Any) -> FaceDataConfig:
    """datasets.<dataset> of params.yaml's commented face block with `overrides`."""
    raw = repo_params(faces=True)["datasets"][dataset]
    return _section(FaceDataConfig, raw, f"datasets.{dataset}", overrides)


def classifier_config(**overrides: Any) -> ClassifierConfig:
    return _section(ClassifierConfig, repo_params()["classifier"], "classifier", overrides)


def evaluate_config(**overrides: Any) -> EvaluateConfig:
    return _section(EvaluateConfig, repo_params()["evaluate"], "evaluate", overrides)


def sample_config(**overrides: Any) -> SampleConfig:
    return _section(SampleConfig, repo_params()["sample"], "sample", overrides)


def monitor_config(**overrides: Any) -> MonitorConfig:
    return _section(MonitorConfig, repo_params()["monitor_defaults"], "monitor_defaults", overrides)


def train_config(**overrides: Any) -> TrainConfig:
    return _section(TrainConfig, repo_params()["train_defaults"], "train_defaults", overrides)
