"""sample: draw a fixed-seed batch from one experiment's trained generator; write a PNG grid (for
conditional models row d shows digit d; faces 8x8) and the raw samples that evaluate scores."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This checkout's own package first: the editable install points at the workspace's src/, which a
# `dvc exp run --temp/--queue` copy must not run (README, "Sweeps with the DVC queue").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gan_pipeline.cli import run_stage
from gan_pipeline.errors import exit_on_error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (sample, tracking sections)")
    p.add_argument("--model", type=Path, required=True, help="folder with generator.safetensors, run.json")
    p.add_argument("--grid", type=Path, required=True, help="PNG grid to write")
    p.add_argument("--samples", type=Path, required=True, help="samples .npz to write")
    return p


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # torch and mlflow load after parsing, so that --help answers at once.
    from gan_pipeline import tracking
    from gan_pipeline.config import flatten, load_params
    from gan_pipeline.runtime import use_threads
    from gan_pipeline.sampling import generate, grid_samples, load_generator, save_grid, save_samples

    params = load_params(args.params)
    use_threads(params.runtime.threads)
    cfg = params.sample
    # The run and its store are checked before anything is computed or replaced; what fails to reach the
    # store later waits in the journal beside the model.
    record = args.model / "run.json"
    run_id = tracking.read_run_record(record)["run_id"]
    journal = args.model / tracking.JOURNAL_NAME
    with tracking.attach(params.tracking, run_id, journal=journal, source=str(record)) as mlflow_run:
        mlflow_run.log_stage_params(flatten(cfg, "sample."))
        generator, spec, model = load_generator(args.model / "generator.safetensors")
        images, labels = generate(generator, spec, model["latent_dim"], cfg.n_samples, cfg.seed)
        save_samples(args.samples, images, labels)
        grid, rows = grid_samples(generator, spec, model["latent_dim"], images, cfg.grid_rows, cfg.seed)
        save_grid(grid, rows, args.grid)
        mlflow_run.log_artifact(args.grid)
        print(f"sampled {len(images)} images; grid {args.grid}")


if __name__ == "__main__":
    run_stage(main)
