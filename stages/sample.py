"""sample: draw a fixed-seed batch from one experiment's trained generator; write a PNG grid (for
conditional models row d shows digit d; faces 8x8) and the raw samples that evaluate scores."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gan_pipeline import tracking
from gan_pipeline.config import load_params
from gan_pipeline.errors import exit_on_error
from gan_pipeline.io import read_json
from gan_pipeline.sampling import FACE_GRID_ROWS, generate, load_generator, save_grid, save_samples


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (sample, tracking sections)")
    parser.add_argument(
        "--model", type=Path, required=True, help="folder with generator.safetensors, run.json"
    )
    parser.add_argument("--grid", type=Path, required=True, help="PNG grid to write")
    parser.add_argument("--samples", type=Path, required=True, help="samples .npz to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.sample

    generator, spec, model = load_generator(args.model / "generator.safetensors")
    images, labels = generate(generator, spec, model["latent_dim"], cfg.n_samples, cfg.seed)
    save_samples(args.samples, images, labels)

    rows = cfg.grid_rows if spec.image_shape[0] == 1 else FACE_GRID_ROWS
    if spec.conditional:  # row d = digit d, one column per latent
        grid_labels = torch.arange(10).repeat_interleave(rows)
        grid, _ = generate(generator, spec, model["latent_dim"], len(grid_labels), cfg.seed, grid_labels)
        rows = 10
    else:
        grid = images[: rows * rows]
    save_grid(grid, rows, args.grid)

    run = read_json(args.model / "run.json")
    with tracking.attach(params.tracking, run["run_id"]) as mlflow_run:
        mlflow_run.log_artifact(args.grid)
        print(f"sampled {len(images)} images; grid {args.grid}")


if __name__ == "__main__":
    main()
