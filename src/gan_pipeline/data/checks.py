"""The check of a dataset's raw source that the pipeline's first stage runs before any other: the one-line
errors its prepare stage would raise about the source itself, from names, headers and metadata only, in a
second or so and without torch (its modules import h5py, numpy and Pillow)."""

from __future__ import annotations

from gan_pipeline.config import DataConfig, FaceDataConfig
from gan_pipeline.data.faces import check_faces
from gan_pipeline.data.sources import check_digit_source


def check_source(cfg: DataConfig | FaceDataConfig) -> None:
    """DataError when cfg's raw source is missing or of the wrong kind (idx headers, a zip's directory, an
    HDF5 file), when an HDF5 source reads data from outside itself or declares sizes over the caps, or when
    on_bad_image: error refuses an entry of its listing (an unsafe name, a non-image, a zip member over the
    size caps); images are not decoded."""
    if isinstance(cfg, FaceDataConfig):
        check_faces(cfg)
    else:
        check_digit_source(cfg)
