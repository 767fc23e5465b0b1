"""Typed params: `params.yaml` parsed once into frozen dataclasses, every value checked.

schema: the dataclasses (one per section); convert: the generic YAML -> dataclass conversion and its
messages; load: reading the file, merging the `*_defaults` into each experiment, the checks across fields.
Errors name the key path, what was expected and what was found, e.g.
`params.yaml: experiments.cgan.train.lr: expected a float > 0, got 'fast'`. Unknown and missing keys are
errors. The file is read as YAML 1.2 (as DVC reads it: `5e-4` is a float), and a key twice is an error.
"""

from gan_pipeline.config.load import (
    check_fits_data,
    check_fits_test_split,
    dataset,
    experiment,
    flatten,
    load_params,
    parse_params,
    read_yaml,
)
from gan_pipeline.config.schema import (
    ClassifierConfig,
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    FaceDataConfig,
    ModelConfig,
    MonitorConfig,
    Params,
    RuntimeConfig,
    SampleConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ClassifierConfig",
    "DataConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "FaceDataConfig",
    "ModelConfig",
    "MonitorConfig",
    "Params",
    "RuntimeConfig",
    "SampleConfig",
    "TrackingConfig",
    "TrainConfig",
    "check_fits_data",
    "check_fits_test_split",
    "dataset",
    "experiment",
    "flatten",
    "load_params",
    "parse_params",
    "read_yaml",
]
