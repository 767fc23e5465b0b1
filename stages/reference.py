"""reference: standard Inception features of the real test split, computed once for every evaluate, and the
real-vs-real floor of the Inception metrics (as many seeded train images as evaluate scores samples, vs
the same test images; their features are kept too, for the in-training checks that rank by
fid_inception), and beside them an info file of the sample sizes, the network, its weights (file
name and sha256) and the environment (its throughput is printed, not kept). evaluate.inception_n = 0
writes an empty reference and skips the network."""

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
    parser.add_argument("--params", default="params.yaml", help="params file (evaluate, sample.seed)")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file")
    parser.add_argument("--features", type=Path, required=True, help="reference features .npz to write")
    parser.add_argument("--metrics", type=Path, required=True, help="floor metrics JSON to write")
    parser.add_argument("--info", type=Path, required=True, help="info JSON to write (network, environment)")
    args = parser.parse_args(argv)
    # torch loads after parsing, so that --help answers at once.
    from gan_pipeline.config import load_params
    from gan_pipeline.io import write_json
    from gan_pipeline.metrics.reference import inception_reference, save_reference
    from gan_pipeline.provenance import environment, without_timings
    from gan_pipeline.runtime import use_threads

    params = load_params(args.params)
    use_threads(params.runtime.threads)
    ref = inception_reference(args.data, params.evaluate, params.sample.seed)
    if len(ref.features):
        rate = ref.info["inception_images_per_s"]
        print(f"reference: {len(ref.features)} test images at {rate:.1f} images/s; {ref.metrics}")
    precision = ref.info.get("inception_precision", "fp32")
    save_reference(args.features, ref.features, ref.test_indices, precision, ref.train_features)
    write_json(args.metrics, ref.metrics)
    write_json(args.info, {**without_timings(ref.info), "environment": environment()})


if __name__ == "__main__":
    run_stage(main)
