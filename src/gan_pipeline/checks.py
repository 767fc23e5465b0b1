"""The checks of the `check` stage: everything that can be checked before any stage runs.

`check_all` reads params.yaml with every schema and cross-field check of `config.load_params` (the
experiment and dataset names among them), then checks each dataset's raw source and the MLflow store, each
failure one line. It imports neither torch nor MLflow, so the stage answers in about a second.
"""

from __future__ import annotations

from pathlib import Path

from gan_pipeline.config import Params, load_params
from gan_pipeline.data.checks import check_source
from gan_pipeline.store import check_store


def check_all(params_path: str | Path) -> Params:
    """The params of `params_path`, once every check has passed; a PipelineError names the first failure."""
    params = load_params(params_path)
    for cfg in params.datasets.values():
        check_source(cfg)
    check_store(params.tracking)
    return params
