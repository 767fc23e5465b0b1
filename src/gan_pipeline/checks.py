"""The checks of the `check` stage: everything that can be checked before any stage runs.

`check_all` reads params.yaml with every schema and cross-field check of `config.load_params` (the
experiment and dataset names among them), then checks each dataset's raw source, the Inception weights file
that `evaluate.inception_weights` names, and the MLflow store, each failure one line. It imports neither
torch nor MLflow, so the stage answers in about a second.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from gan_pipeline.config import Params, load_params
from gan_pipeline.data.checks import check_source
from gan_pipeline.errors import DataError
from gan_pipeline.store import check_store

# torch.save writes a zip archive (since torch 1.6); older files are a pickle, whose first byte is PROTO.
_PICKLE_PROTO = 0x80


def check_all(params_path: str | Path) -> Params:
    """The params of `params_path`, once every check has passed; a PipelineError names the first failure."""
    params = load_params(params_path)
    for cfg in params.datasets.values():
        check_source(cfg)
    if params.evaluate.inception_weights is not None:
        check_weights_file(Path(params.evaluate.inception_weights))
    check_store(params.tracking)
    return params


def check_weights_file(path: Path) -> None:
    """DataError unless `path` is a file of the kind torch.save writes (its contents are read by evaluate,
    which refuses anything but names mapped to tensors)."""
    if not path.is_file():
        raise DataError(f"{path}: Inception weights file not found (evaluate.inception_weights)")
    with open(path, "rb") as f:
        first = f.read(1)
    if not zipfile.is_zipfile(path) and first != bytes([_PICKLE_PROTO]):
        raise DataError(
            f"{path}: not a torch state dict of Inception weights (evaluate.inception_weights; "
            "not a file that torch.save writes)"
        )
