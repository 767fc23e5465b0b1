"""Train a face GAN on a prepared face file for a wall-clock budget, writing an 8x8 grid after every
epoch (the sample grid in the README comes from this), and print the training throughput.

    python benchmarks/train_faces.py --data /tmp/faces/celeba64.h5 --model dcgan64 --minutes 20 \
        --grid docs/images/dcgan64_celeba_grid.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gan_pipeline.data.streaming import H5Batches
from gan_pipeline.models import GAN_MODELS
from gan_pipeline.runtime import device
from gan_pipeline.sampling import FACE_GRID_ROWS, generate, save_grid
from gan_pipeline.training.loop import train_gan

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from configs import experiment_config  # noqa: E402  (params.yaml's values plus overrides)


class OutOfTime(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="prepared face HDF5 file")
    parser.add_argument("--model", default="dcgan64")
    parser.add_argument("--minutes", type=float, default=20.0, help="stop after the epoch that passes this")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--init-std", type=float, default=0.02, help="<= 0 keeps PyTorch's default init")
    parser.add_argument("--grid", help="PNG to write the 8x8 grid to after every epoch")
    args = parser.parse_args()

    spec = GAN_MODELS[args.model]
    exp = experiment_config(
        args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        init_std=args.init_std if args.init_std > 0 else None, log_every=10, precision="auto",
    )  # fmt: skip
    batches = H5Batches(args.data, spec.value_range, args.batch_size, device())
    start = time.perf_counter()

    def on_epoch(epoch: int, step: int, generator) -> None:
        seconds = time.perf_counter() - start
        print(
            f"epoch {epoch}: {step} steps, {seconds:.0f} s, "
            f"{step * args.batch_size / seconds:.1f} real images/s"
        )
        if args.grid:
            images, _ = generate(generator, spec, 100, FACE_GRID_ROWS**2, seed=1234)
            save_grid(images, FACE_GRID_ROWS, args.grid)
            generator.train()
        if seconds > args.minutes * 60:
            raise OutOfTime

    def on_step(step: int, row: dict) -> None:
        if step % 50 == 0:
            print(
                f"  step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"),
                flush=True,
            )

    try:
        train_gan(exp, batches, on_step, on_epoch)
    except OutOfTime:
        pass
    print(f"done after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
