"""prepare: read raw MNIST from the source that params.yaml names (data.*) and write a versioned,
split HDF5 file plus a stats JSON (class counts, content hash)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gan_pipeline.config import load_params
from gan_pipeline.data import prepare
from gan_pipeline.errors import exit_on_error


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (reads the data section)")
    parser.add_argument("--out", type=Path, required=True, help="prepared HDF5 file to write")
    parser.add_argument("--stats", type=Path, required=True, help="stats JSON to write")
    args = parser.parse_args(argv)

    stats = prepare(load_params(args.params).data, args.out, args.stats)
    print(
        f"prepared {stats['n_total']} images from {stats['source']}: {stats['n_train']} train / "
        f"{stats['n_test']} test, {stats['content_hash']}"
    )


if __name__ == "__main__":
    main()
