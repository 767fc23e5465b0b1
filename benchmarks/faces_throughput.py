"""Face throughputs, each set measured in one run so that ratios hold on a shared, noisy CPU:

    python benchmarks/faces_throughput.py raw      # build the tutorial HDF5 and a zip from ../shared's JPEGs
    python benchmarks/faces_throughput.py prepare  # prepare images/s per raw form, at 64 and 128 px
    python benchmarks/faces_throughput.py loader   # H5Batches batches/s and images/s at 64 and 128 px
    python benchmarks/faces_throughput.py train    # real images/s: convgan128 batched vs one image per step,
                                                   # and dcgan64 (float32; bf16/channels_last as a look)

Needs ../shared/data/celeba (5,340 real CelebA JPEGs with the official split); says so and stops without it.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from gan_pipeline.data.faces import prepare_faces
from gan_pipeline.data.streaming import H5Batches
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.training.losses import Bce
from gan_pipeline.training.steps import StepBatch, gan_step

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from configs import face_data_config  # noqa: E402  (params.yaml's values plus overrides)

# ../shared beside the repository (or beside the folder of worktrees that holds it)
SHARED = next(
    (
        p / "shared/data/celeba"
        for p in (REPO.parent, REPO.parent.parent)
        if (p / "shared/data/celeba").is_dir()
    ),
    REPO.parent / "shared/data/celeba",
)
JPEGS = SHARED / "img_align_celeba"
LABELS = SHARED / "celeba_labels.csv"


def build_raw(out: Path) -> None:
    """The tutorial's HDF5 (decoded arrays, gzip 9 as the tutorial wrote it) and img_align_celeba.zip."""
    names = sorted(p.name for p in JPEGS.glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(out / "celeba_aligned_small.h5py", "w") as f:
        for i, name in enumerate(names):
            data = np.asarray(Image.open(JPEGS / name).convert("RGB"))
            f.create_dataset(f"img_align_celeba/{i}.jpg", data=data, compression="gzip", compression_opts=9)
    with zipfile.ZipFile(out / "img_align_celeba.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.mkdir("img_align_celeba")
        for name in names:
            archive.write(JPEGS / name, f"img_align_celeba/{name}")
    print(f"wrote {len(names)} faces as {out}/celeba_aligned_small.h5py and {out}/img_align_celeba.zip")


def bench_prepare(raw: Path, out: Path, workers: list[int]) -> None:
    forms = {
        "jpeg_folder": {"path": str(JPEGS), "split": "official", "partition_file": str(LABELS)},
        "zip": {
            "path": str(raw / "img_align_celeba.zip"),
            "split": "official",
            "partition_file": str(LABELS),
        },
        "celeba_h5": {"path": str(raw / "celeba_aligned_small.h5py")},
    }
    for size in (64, 128):
        for n in workers:
            for source, extra in forms.items():
                seeded = {"split": "seeded", "partition_file": None, "on_bad_image": "error", **extra}
                cfg = face_data_config(source=source, image_size=size, decode_workers=n, **seeded)
                stats = prepare_faces(cfg, out / f"{source}{size}.h5", out / f"{source}{size}.json")
                print(f"RESULT prepare {source} {size}px workers={n}: {stats['images_per_s']:.0f} images/s")


def bench_loader(out: Path) -> None:
    for size in (64, 128):
        path = out / f"jpeg_folder{size}.h5"
        batches = H5Batches(path, (-1.0, 1.0), 64)
        start = time.perf_counter()
        n = sum(len(x) for x, _ in batches.epoch(torch.Generator().manual_seed(0)))
        seconds = time.perf_counter() - start
        print(
            f"RESULT loader {size}px batch 64: {len(batches) / seconds:.1f} batches/s, "
            f"{n / seconds:.0f} images/s"
        )


def _train_rate(name: str, batch: int, steps: int, bf16: bool = False, channels_last: bool = False) -> float:
    """Real images/s over `steps` gan_steps of `batch` (after one warm-up step), float32 unless told."""
    torch.manual_seed(0)
    spec = GAN_MODELS[name]
    generator, discriminator = build_gan(name, 100)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    generator.to(memory_format=fmt).train()
    discriminator.to(memory_format=fmt).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    low, high = spec.value_range
    real = (torch.rand(batch, *spec.image_shape) * (high - low) + low).contiguous(memory_format=fmt)
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            batch_of = StepBatch(real, (), (), torch.randn(batch, 100))
            gan_step(generator, discriminator, opt_g, opt_d, batch_of, Bce())
    return steps * batch / (time.perf_counter() - start)


def bench_train(steps64: int, steps1: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    one = _train_rate("convgan128", 1, steps1)
    batched = _train_rate("convgan128", 64, steps64)
    print(f"RESULT train convgan128 batch 1 (the tutorial's loop): {one:.2f} real images/s")
    print(f"RESULT train convgan128 batch 64: {batched:.2f} real images/s ({batched / one:.1f}x batch 1)")
    print(f"RESULT train dcgan64 batch 64: {_train_rate('dcgan64', 64, steps64 * 4):.1f} real images/s")
    print(
        f"RESULT train convgan128 batch 64 bf16 autocast + channels_last: "
        f"{_train_rate('convgan128', 64, steps64, bf16=True, channels_last=True):.2f} real images/s"
    )
    print(
        f"RESULT train dcgan64 batch 64 bf16 autocast + channels_last: "
        f"{_train_rate('dcgan64', 64, steps64 * 4, bf16=True, channels_last=True):.1f} real images/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["raw", "prepare", "loader", "train"])
    parser.add_argument("--raw", type=Path, default=Path("/tmp/faces/raw"), help="where `raw` writes")
    parser.add_argument("--out", type=Path, default=Path("/tmp/faces/bench"), help="prepared files")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed batch-64 steps (dcgan64: 4x)")
    parser.add_argument("--steps-one", type=int, default=32, help="timed batch-1 steps of convgan128")
    args = parser.parse_args()
    if args.what != "train" and not JPEGS.is_dir():
        sys.exit(f"skipped: {JPEGS} not found (the shared CelebA faces)")
    if args.what == "raw":
        build_raw(args.raw)
    elif args.what == "prepare":
        bench_prepare(args.raw, args.out, args.workers)
    elif args.what == "loader":
        bench_loader(args.out)
    else:
        bench_train(args.steps, args.steps_one)


if __name__ == "__main__":
    main()
