"""prepare: read raw MNIST from the source that params.yaml names (data.*), or with --faces NAME the raw
CelebA faces of faces.NAME, and write a versioned, split HDF5 file plus a stats JSON (counts, hash)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gan_pipeline.errors import ParamsError, exit_on_error


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (reads the data section)")
    parser.add_argument("--out", type=Path, required=True, help="prepared HDF5 file to write")
    parser.add_argument("--stats", type=Path, required=True, help="stats JSON to write")
    parser.add_argument(
        "--faces", metavar="NAME", help="prepare the face dataset faces.NAME instead of MNIST"
    )
    args = parser.parse_args(argv)
    # numpy, h5py and PIL load after parsing, so that --help answers at once.
    from gan_pipeline.config import load_params
    from gan_pipeline.data import prepare
    from gan_pipeline.data.faces import prepare_faces

    params = load_params(args.params)

    if args.faces is None:
        stats = prepare(params.data, args.out, args.stats)
    elif args.faces in params.faces:
        stats = prepare_faces(params.faces[args.faces], args.out, args.stats)
    else:
        have = ", ".join(params.faces) or "none"
        raise ParamsError(f"{args.params}: faces.{args.faces}: no such face dataset (have: {have})")
    print(
        f"prepared {stats['n_total']} images from {stats['source']}: {stats['n_train']} train / "
        f"{stats['n_test']} test, {stats['content_hash']}"
    )


if __name__ == "__main__":
    main()
