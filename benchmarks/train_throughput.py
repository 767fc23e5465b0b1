"""Training throughput (real images/s through D) per model, all measured in one run so ratios hold on a
shared, noisy CPU: our train_gan loop (train.precision auto, and fp32) vs a plain fp32 batched PyTorch loop
of the same architecture written here vs the tutorials' one-image-per-step loop. Configurations are
interleaved over `--rounds` rounds and the best round of each is kept (the least disturbed by neighbours);
the first step of every measurement is a warm-up and not timed. Faces train on random uint8 images.

    python benchmarks/train_throughput.py                       # all five models, ~5-10 min on 2 cores
    python benchmarks/train_throughput.py --models dcgan64 --rounds 3 --scale 4   # longer, steadier
    python benchmarks/train_throughput.py --compile              # dcgan28: torch.compile vs eager
    python benchmarks/train_throughput.py --precision            # fp32 / bf16, +- channels_last per model
    python benchmarks/train_throughput.py --flops                # GFLOP per real image: ours vs plain step
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.runtime import Precision
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.losses import Bce
from gan_pipeline.training.steps import StepBatch, gan_step

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from configs import experiment_config  # noqa: E402  (params.yaml's values plus overrides)

# model -> (timed batch-64 steps, timed one-image steps) at --scale 1
STEPS = {
    "mlp_gan": (40, 200),
    "cgan": (40, 200),
    "dcgan28": (20, 100),
    "dcgan64": (4, 32),
    "convgan128": (2, 8),
}
BATCH = 64


def _random_batches(name: str, n: int, batch: int) -> TensorBatches:
    spec = GAN_MODELS[name]
    g = torch.Generator().manual_seed(0)
    shape = (n, *spec.image_shape[1:], 3) if spec.image_shape[0] == 3 else (n, *spec.image_shape[1:])
    images = to_float(torch.randint(0, 256, shape, generator=g, dtype=torch.uint8), spec.value_range)
    return TensorBatches(images, torch.arange(n) % 10, batch)


def ours(name: str, steps: int, precision: str, compile_: bool = False) -> tuple[float, str, float]:
    """(images/s over steps 2..steps+1 of train_gan, what precision resolved to, seconds of step 1)."""
    exp = experiment_config(
        name, epochs=1, lr=2e-4, batch_size=BATCH, log_every=1, precision=precision, compile=compile_
    )
    stamps: list[float] = []
    start = time.perf_counter()
    result = train_gan(exp, _random_batches(name, (steps + 1) * BATCH, BATCH), lambda s, r: stamps.append(
        time.perf_counter()))  # fmt: skip
    return steps * BATCH / (stamps[-1] - stamps[0]), result.precision, stamps[0] - start


def plain(name: str, steps: int, batch: int) -> float:
    """A plain fp32 PyTorch GAN loop as a tutorial writes it (batch 1: the one-image-per-step loop)."""
    torch.manual_seed(0)
    spec = GAN_MODELS[name]
    generator, discriminator = build_gan(name, 100)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    data = _random_batches(name, (steps + 1) * batch, batch)
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    start = 0.0
    for i, (real, labels) in enumerate(data.epoch(torch.Generator().manual_seed(0))):
        if i == 1:
            start = time.perf_counter()
        cond = (labels,) if spec.conditional else ()
        fake = generator(torch.randn(batch, 100), *cond)
        opt_d.zero_grad()
        loss_d = bce(discriminator(real, *cond), ones) + bce(discriminator(fake.detach(), *cond), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        bce(discriminator(fake, *cond), ones).backward()
        opt_g.step()
    return steps * batch / (time.perf_counter() - start)


def bench_models(models: list[str], rounds: int, scale: float, ours_fp32: bool = True) -> None:
    best: dict[tuple[str, str], float] = {}
    resolved: dict[str, str] = {}
    for r in range(rounds):
        for name in models:
            batched, single = (max(2, round(s * scale)) for s in STEPS[name])
            auto, resolved[name], _ = ours(name, batched, "auto")
            runs = {"ours auto": auto}
            if ours_fp32:
                runs["ours fp32"] = ours(name, batched, "fp32")[0]
            runs["plain fp32 batch 64"] = plain(name, batched, BATCH)
            runs["plain fp32 batch 1"] = plain(name, single, 1)
            for key, value in runs.items():
                best[name, key] = max(best.get((name, key), 0.0), value)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs.items()), flush=True)
    threads = torch.get_num_threads()
    print(f"\ntorch {torch.__version__}, {threads} threads; best of {rounds} rounds, real images/s")
    for name in models:
        a, p, one = (best[name, k] for k in ("ours auto", "plain fp32 batch 64", "plain fp32 batch 1"))
        f32 = best.get((name, "ours fp32"))
        fp32_part = f", ours fp32/plain {f32 / p:.2f}x ({f32:.1f})" if f32 else ""
        print(
            f"RESULT {name}: ours auto ({resolved[name]}) {a:.1f}, plain fp32 batch 64 {p:.1f}, "
            f"one image per step {one:.1f} | ours/plain {a / p:.2f}x, "
            f"ours/one-image {a / one:.1f}x{fp32_part}"
        )


def step_rate(name: str, steps: int, precision: Precision) -> float:
    """Images/s of gan_step alone (no loop) at batch 64 under `precision`, after one warm-up step."""
    torch.manual_seed(0)
    generator, discriminator = build_gan(name, 100)
    precision.prepare(generator, discriminator)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    start = 0.0
    for i, (real, labels) in enumerate(
        _random_batches(name, (steps + 1) * BATCH, BATCH).epoch(torch.Generator())
    ):
        if i == 1:
            start = time.perf_counter()
        cond = (labels,) if GAN_MODELS[name].conditional else ()
        batch = StepBatch(precision.batch(real), cond, cond, torch.randn(BATCH, 100))
        gan_step(generator, discriminator, opt_g, opt_d, batch, Bce(), precision=precision)
    return steps * BATCH / (time.perf_counter() - start)


def bench_precision(models: list[str], rounds: int, scale: float) -> None:
    """The measurements behind train.precision auto: gan_step images/s per model in fp32, bf16 autocast,
    and each with and without channels_last."""
    kinds = {
        "fp32": Precision("fp32", "cpu", False),
        "fp32+cl": Precision("fp32", "cpu", True),
        "bf16": Precision("bf16", "cpu", False),
        "bf16+cl": Precision("bf16", "cpu", True),
    }
    best: dict[tuple[str, str], float] = {}
    for r in range(rounds):
        for name in models:
            steps = max(2, round(STEPS[name][0] * scale))
            runs = {k: step_rate(name, steps, precision) for k, precision in kinds.items()}
            for key, value in runs.items():
                best[name, key] = max(best.get((name, key), 0.0), value)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs.items()), flush=True)
    for name in models:
        f32 = best[name, "fp32"]
        rates = ", ".join(f"{k} {best[name, k]:.1f} ({best[name, k] / f32:.2f}x)" for k in kinds)
        print(f"RESULT precision {name} ({torch.get_num_threads()} threads, images/s): {rates}")


def bench_compile(rounds: int, scale: float) -> None:
    """dcgan28 at fp32 and bf16: eager vs torch.compile (steady-state images/s; compile time apart), and
    whether two compiled runs end with the same weights."""
    steps = max(2, round(STEPS["dcgan28"][0] * scale))
    best: dict[tuple[str, bool], float] = {}
    for r in range(rounds):
        for precision in ("fp32", "bf16"):
            for compiled in (False, True):
                rate, _, first = ours("dcgan28", steps, precision, compiled)
                best[precision, compiled] = max(best.get((precision, compiled), 0.0), rate)
                print(f"round {r + 1} dcgan28 {precision} compile={compiled}: {rate:.1f} images/s, "
                      f"first step {first:.1f} s", flush=True)  # fmt: skip
    for precision in ("fp32", "bf16"):
        eager, compiled = best[precision, False], best[precision, True]
        print(f"RESULT compile dcgan28 {precision}: eager {eager:.1f}, compiled {compiled:.1f} images/s "
              f"({compiled / eager:.2f}x)")  # fmt: skip


def bench_flops(models: list[str], batch: int = 4) -> None:
    """FLOPs per real image of one training step (torch.utils.flop_counter, fp32): our gan_step, whose
    G update backpropagates through a frozen D, and the plain loop's step, which also computes D's weight
    gradients there. With a CPU's peak FLOP rate this bounds the images/s any loop can reach."""
    from torch.utils.flop_counter import FlopCounterMode

    for name in models:
        spec = GAN_MODELS[name]
        generator, discriminator = build_gan(name, 100)
        opt_g = torch.optim.Adam(generator.parameters())
        opt_d = torch.optim.Adam(discriminator.parameters())
        real, labels = next(iter(_random_batches(name, batch, batch).epoch(torch.Generator())))
        cond = (labels,) if spec.conditional else ()
        with FlopCounterMode(display=False) as ours_count:
            step_batch = StepBatch(real, cond, cond, torch.randn(batch, 100))
            gan_step(generator, discriminator, opt_g, opt_d, step_batch, Bce())
        with FlopCounterMode(display=False) as plain_count:
            plain(name, 1, batch)  # a warm-up step and a timed one
        ours_f = ours_count.get_total_flops() / batch / 1e9
        plain_f = plain_count.get_total_flops() / (2 * batch) / 1e9
        print(f"RESULT flops {name}: ours {ours_f:.3g} GFLOP per real image, plain loop {plain_f:.3g} "
              f"({plain_f / ours_f:.2f}x ours)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the timed steps")
    parser.add_argument("--compile", action="store_true", help="only dcgan28: torch.compile vs eager")
    parser.add_argument("--precision", action="store_true", help="gan_step in fp32/bf16, +-channels_last")
    parser.add_argument("--flops", action="store_true", help="GFLOP per real image of one step, per model")
    parser.add_argument("--skip-ours-fp32", action="store_true", help="not our loop in fp32 (saves time)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flops:
        bench_flops(args.models)
    elif args.compile:
        bench_compile(args.rounds, args.scale)
    elif args.precision:
        bench_precision(args.models, args.rounds, args.scale)
    else:
        bench_models(args.models, args.rounds, args.scale, not args.skip_ours_fp32)


if __name__ == "__main__":
    main()
