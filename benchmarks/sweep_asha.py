"""What does ASHA save? The same small sweep (2 learning rates x 2 seeds of one experiment, a check every
epoch) run twice with python -m gan_pipeline.sweep on a local Ray, once with ASHA ending the losing trials at
the checks and once with every trial run to its end (--scheduler fifo); prints each trial's end and both
wall times, measured in one run.

    python benchmarks/sweep_asha.py --experiment mlp_gan --epochs 6    # in a project with the inputs made

Needs what a sweep needs in the working directory (`dvc repro reference`). The sweeps' MLflow runs go to
the project's store like any sweep's; their Ray state to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="mlp_gan")
    p.add_argument("--epochs", type=int, default=6, help="train.epochs of every trial (a check each)")
    p.add_argument("--lr", default="0.0002,1e-6", help="the learning rates (a good one and a losing one)")
    p.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs (one trial per thread)")
    return p


def sweep(args: argparse.Namespace, scheduler: str, storage: Path) -> tuple[float, dict]:
    """One sweep with `scheduler`: its wall time (s) and summary."""
    name = f"bench-{scheduler}-{time.strftime('%H%M%S')}"
    fixed = [f"train.epochs={args.epochs}", "train.batch_size=100", "train.ema_decay=null",
             "train.ema_warmup_steps=0", "train.checkpoint_every=40"]  # fmt: skip
    cmd = [sys.executable, "-m", "gan_pipeline.sweep", "--experiment", args.experiment,
           *(a for item in fixed for a in ("-S", item)), "-S", f"train.lr={args.lr}", "--seeds", "2",
           "--cpus", str(args.cpus), "--scheduler", scheduler, "--reduction-factor", "2",
           "--storage", str(storage), "--name", name]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads((storage / name / "summary.json").read_text())


def main() -> None:
    args = parser().parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep_bench_") as folder:
        results = {s: sweep(args, s, Path(folder)) for s in ("asha", "fifo")}
    print("| scheduler | trial | train.lr | train.seed | monitor score | steps | ended |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for scheduler, (_, summary) in results.items():
        for t in sorted(summary["trials"], key=lambda t: t["trial_id"]):
            ended = "to the end" if t["completed"] else "stopped early" if t["stopped_early"] else "failed"
            print(f"| {scheduler} | {t['trial_id'][-5:]} | {t['params']['train.lr']} | "
                  f"{t['params']['train.seed']} | {t['score']:.1f} | {t['steps']} | {ended} |")  # fmt: skip
    asha, fifo = results["asha"][0], results["fifo"][0]
    print(f"\nwall time, 4 trials, {args.epochs} epochs: ASHA {asha:.0f} s, all to the end {fifo:.0f} s "
          f"({asha / fifo:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
