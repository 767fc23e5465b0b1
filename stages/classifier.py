"""classifier: train the digit classifier that judges coverage and supplies FID features, report its
test accuracy and the real-vs-real FID floor (train split vs test split) in its features, and beside them
an info file of the sample sizes and the environment (the training time is printed: info files are kept in
git and must not change from run to run)."""

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
    parser.add_argument("--params", default="params.yaml", help="params file (classifier, sample sections)")
    parser.add_argument("--data", type=Path, required=True, help="prepared HDF5 file")
    parser.add_argument("--out", type=Path, required=True, help="classifier weights (.safetensors) to write")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--info", type=Path, required=True, help="info JSON to write (sizes, environment)")
    args = parser.parse_args(argv)
    # torch loads after parsing, so that --help answers at once.
    from gan_pipeline.config import load_params
    from gan_pipeline.io import save_weights, write_json
    from gan_pipeline.metrics.suite import split_sample_sizes
    from gan_pipeline.provenance import environment
    from gan_pipeline.runtime import use_threads
    from gan_pipeline.training.classifier import fit_and_score

    params = load_params(args.params)
    use_threads(params.runtime.threads)
    model, scores, seconds = fit_and_score(args.data, params.classifier, params.sample.n_samples)
    save_weights(args.out, model, {"feature_dim": params.classifier.feature_dim})
    metrics, sizes = split_sample_sizes(scores)
    write_json(args.metrics, metrics)
    write_json(args.info, {"sample_sizes": sizes, "environment": environment()})  # no timing: it is in git
    print(
        f"classifier: test accuracy {metrics['test_accuracy']:.4f} after {seconds:.0f} s; "
        f"real FID floor {metrics['fid_classifier_real_floor']:.3f}"
    )


if __name__ == "__main__":
    run_stage(main)
