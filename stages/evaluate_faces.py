"""evaluate_faces: score one face experiment's samples against the prepared test faces. Standard Inception
FID is not computed yet (it comes with gan_pipeline.metrics.inception, the evaluation issue) and the metrics
say so; meanwhile they carry the per-channel mean/std of samples vs real as a sanity check. Writes DVC
metrics and logs them to the MLflow run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gan_pipeline.config import load_params
from gan_pipeline.data.streaming import read_faces
from gan_pipeline.errors import DataError, exit_on_error
from gan_pipeline.io import read_json, write_json
from gan_pipeline.metrics.faces import evaluate_faces
from gan_pipeline.tracking import Tracker


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (tracking section)")
    parser.add_argument("--data", type=Path, required=True, help="prepared face HDF5 file (its test split)")
    parser.add_argument("--samples", type=Path, required=True, help="samples .npz from the sample stage")
    parser.add_argument("--run", type=Path, required=True, help="run.json from the train stage")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)

    try:
        with np.load(args.samples) as npz:
            fake = npz["images"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{args.samples}: not a samples file from the sample stage ({exc})") from None
    real = read_faces(args.data, "test", limit=len(fake))
    if fake.ndim != 4 or fake.shape[1:] != real.shape[1:]:
        raise DataError(
            f"{args.samples}: samples are {fake.shape[1:]}, but {args.data} holds {real.shape[1:]}"
        )
    metrics = evaluate_faces(real, fake)
    write_json(args.metrics, metrics)

    run = read_json(args.run)
    Tracker(params.tracking.experiment_name).log_metrics(run["run_id"], metrics, step=run["steps"])
    print(f"{run['experiment']}: fid_inception {metrics['fid_inception_status']}")
    print(
        f"{run['experiment']}: per-channel mean (r, g, b) samples "
        f"{[round(metrics[f'channel_mean_fake_{c}'], 3) for c in 'rgb']} vs real "
        f"{[round(metrics[f'channel_mean_real_{c}'], 3) for c in 'rgb']}; std samples "
        f"{[round(metrics[f'channel_std_fake_{c}'], 3) for c in 'rgb']} vs real "
        f"{[round(metrics[f'channel_std_real_{c}'], 3) for c in 'rgb']} "
        f"({metrics['n_fake']} samples, {metrics['n_real']} real test faces)"
    )


if __name__ == "__main__":
    main()
