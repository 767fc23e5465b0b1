"""The pipeline's own overhead, measured in one run on a copy of this project with tiny params (the test
suite's): the time of a no-op `dvc repro` (after one real reproduction; it checks that nothing ran), and
the share of a short train stage spent outside its training steps (interpreter and imports, MLflow, I/O).

    python benchmarks/pipeline_overhead.py                 # ~3-6 min on 2 busy cores (the first repro)
    python benchmarks/pipeline_overhead.py --epochs 5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from pipeline_helpers import copy_project, ran_stages, run, set_params  # noqa: E402

TRAIN = (
    "python stages/train.py --experiment {exp} --data data/prepared/mnist.h5 "
    "--stats data/prepared/mnist.stats.json --out {out} --log {out}/train_log.csv "
    "--classifier models/classifier.safetensors --eval-log {out}/eval.csv"
)


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = run(cmd, cwd)
    return time.perf_counter() - start, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="dcgan28")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the timed train stage (tiny params)")
    parser.add_argument("--repeats", type=int, default=3, help="no-op repros and train runs (median kept)")
    args = parser.parse_args()

    repo = copy_project(Path(tempfile.mkdtemp(prefix="pipeline_overhead_")))
    first, output = timed(["dvc", "repro"], repo)
    print(f"first dvc repro (tiny params): {first:.0f} s, {len(ran_stages(output))} stages ran", flush=True)
    noop = []
    for _ in range(args.repeats):
        seconds, output = timed(["dvc", "repro"], repo)
        if ran_stages(output):
            raise SystemExit(f"the no-op dvc repro ran {sorted(ran_stages(output))}")
        noop.append(seconds)
    print(f"no-op dvc repro: {', '.join(f'{s:.2f}' for s in noop)} s", flush=True)

    def edit(params: dict) -> None:
        params["experiments"][args.experiment]["train"]["epochs"] = args.epochs

    set_params(repo, edit)
    startup = statistics.median(
        timed(["python", "stages/train.py", "--help"], repo)[0] for _ in range(args.repeats)
    )
    walls, steps_s = [], []
    for i in range(args.repeats):
        out = f"bench/train{i}"  # a fresh folder: no checkpoint to resume
        wall, _ = timed(TRAIN.format(exp=args.experiment, out=out).split(), repo)
        info = json.loads((repo / out / "run.json").read_text())
        walls.append(wall)
        steps_s.append(info["train_seconds"])
    wall, inside = statistics.median(walls), statistics.median(steps_s)
    shown = ", ".join(f"{w:.1f} (loop {s:.1f})" for w, s in zip(walls, steps_s, strict=True))
    print(f"train stage {args.experiment} ({info['steps']} steps, {info['precision']}): wall {shown} s")
    noop_s = statistics.median(noop)
    print(f"\nRESULT no-op dvc repro: {noop_s:.2f} s (median of {args.repeats}; target <= 3 s)")
    print(
        f"RESULT train stage outside its training loop: {wall - inside:.1f} s of {wall:.1f} s "
        f"({(wall - inside) / wall:.0%}; target <= 10 s), of which interpreter + imports "
        f"(`stages/train.py --help`) {startup:.1f} s"
    )


if __name__ == "__main__":
    main()
