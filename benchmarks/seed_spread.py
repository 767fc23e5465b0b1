"""How much do the metrics move with the training seed alone? Train each experiment of params.yaml with
several values of train.seed, sample and score every run exactly as the train, sample and evaluate stages
do, and print per experiment and metric each seed's value, the mean, std (N - 1), min and max, and the
tolerance the retrain gate derives from them (gan_pipeline.reports.gate.tolerance_from_spread). `--write`
writes all of it to the tolerances file that the gate reads.

    python benchmarks/seed_spread.py --write benchmarks/tolerances.json   # 3 experiments x 3 seeds, ~1 h
    python benchmarks/seed_spread.py --experiment cgan --seeds 0 1 --epochs 1   # a quick try

Needs the outputs of `dvc repro prepare classifier reference` (the paths below; flags point elsewhere).
Every finished (experiment, seed) run goes into `--cache` at once, so the same command started again after
a kill goes on with the runs still missing. A cached run is reused only if it was made with the same
experiment params (seed and epochs included), sample and evaluate params and input files. Nothing is
logged to MLflow; each run's weights and samples live in a temporary folder. One torch thread by default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from gan_pipeline.config import Params, flatten, load_params, parse_params
from gan_pipeline.io import read_json, write_json
from gan_pipeline.provenance import file_md5
from gan_pipeline.reports.gate import TOLERANCE_RULE, scalar_metrics, tolerance_from_spread, worse_when
from gan_pipeline.runtime import device
from gan_pipeline.scoring import sample_and_score
from gan_pipeline.training.experiment import ExperimentPaths, plan_training, train_experiment


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", action="append", help="a key of experiments (repeatable; default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values (at least 2)")
    p.add_argument("--epochs", type=int, help="train.epochs for every run (default: params.yaml's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--write", type=Path, help="tolerances file to write (the gate's: benchmarks/tolerances.json)"
    )
    p.add_argument("--cache", type=Path, default=Path("benchmarks/seed_spread.cache.json"),
                   help="finished runs, written after each one")  # fmt: skip
    add_input_args(p)
    return p


def add_input_args(p: argparse.ArgumentParser) -> None:
    """The params file and the pipeline's outputs that a run trains and is scored with (run_once's args)."""
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, default=Path("data/prepared/mnist.h5"))
    p.add_argument("--stats", type=Path, default=Path("data/prepared/mnist.stats.json"))
    p.add_argument("--classifier", type=Path, default=Path("models/classifier.safetensors"))
    p.add_argument("--classifier-metrics", type=Path, default=Path("metrics/classifier.json"))
    p.add_argument("--inception-reference", type=Path, default=Path("data/reference/inception_test.npz"))


def seeded_params(args: argparse.Namespace, name: str, seed: int) -> Params:
    """params.yaml with experiments.<name>.train.seed (and train.epochs, with --epochs) overridden."""
    raw = yaml.safe_load(args.params.read_text())
    train = raw["experiments"][name].setdefault("train", {})
    train["seed"] = seed
    if args.epochs is not None:
        train["epochs"] = args.epochs
    return parse_params(raw, f"{args.params} (experiments.{name}.train.seed {seed})")


def identity(params: Params, name: str, inputs: dict[str, str]) -> dict[str, Any]:
    """What a cached run must have been made with to stand for a run of `name` with `params`."""
    return {
        "experiment": flatten(params.experiments[name]),
        "sample": flatten(params.sample),
        "evaluate": flatten(params.evaluate),
        "inputs": inputs,
    }


def run_once(args: argparse.Namespace, params: Params, name: str, work: Path) -> dict[str, Any]:
    """Train experiment `name` into `work` as the train stage does (no MLflow), sample it as the sample
    stage does and score it as the evaluate stage does; return the metrics and the seconds each part took."""
    paths = ExperimentPaths(
        args.data, args.stats, work / "model", work / "train_log.csv", work / "checkpoint.safetensors",
        args.classifier, work / "eval_log.csv", inception_reference=args.inception_reference,
    )  # fmt: skip
    start = time.perf_counter()
    train_experiment(plan_training(params, str(args.params), name, paths), paths)
    trained = time.perf_counter()
    metrics = sample_and_score(params, paths.generator, work / "samples.npz", args.data, args.classifier,
                               args.classifier_metrics, args.inception_reference)  # fmt: skip
    return {
        "metrics": dict(metrics.metrics),  # the scores alone, as evaluate's metrics file holds them
        "train_seconds": round(trained - start, 1),
        "evaluate_seconds": round(time.perf_counter() - trained, 1),
    }


def spread(values: list[float], metric: str) -> dict[str, Any]:
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values),
        "min": min(values),
        "max": max(values),
        "tolerance": tolerance_from_spread(metric, values),
    }


def table(name: str, seeds: list[int], rows: dict[str, dict[str, Any]]) -> list[str]:
    """A Markdown table of one experiment's spread; gated metrics first, marked."""
    cols = [f"seed {s}" for s in seeds] + ["mean", "std", "min", "max", "tolerance"]
    lines = [f"### {name}", "", "| metric | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    order = sorted(rows, key=lambda m: (worse_when(m) is None, m))
    for metric in order:
        r = rows[metric]
        cells = [*r["values"], r["mean"], r["std"], r["min"], r["max"], r["tolerance"]]
        gated = "" if worse_when(metric) is None else " (gated)"
        lines.append(f"| {metric}{gated} | " + " | ".join(f"{v:.4g}" for v in cells) + " |")
    return lines + [""]


def main() -> None:
    args = parser().parse_args()
    if len(args.seeds) < 2:
        raise SystemExit("--seeds: a spread needs at least two seeds")
    torch.set_num_threads(args.threads)
    names = args.experiment or list(load_params(args.params).experiments)
    inputs = {str(p): file_md5(p) for p in (args.data, args.classifier, args.inception_reference)}
    cache = read_json(args.cache) if args.cache.exists() else {}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = []
        for seed in args.seeds:
            key = f"{name} seed {seed}"
            params = seeded_params(args, name, seed)
            want = identity(params, name, inputs)
            if cache.get(key, {}).get("identity") != want:
                print(f"{key}: training", flush=True)
                with tempfile.TemporaryDirectory(prefix="seed_spread_") as work:
                    run = run_once(args, params, name, Path(work))
                cache[key] = {"identity": want, **run}
                write_json(args.cache, cache)
            run = cache[key]
            print(f"{key}: train {run['train_seconds']} s, evaluate {run['evaluate_seconds']} s", flush=True)
            runs.append(run)
        values = [scalar_metrics(r["metrics"]) for r in runs]
        shared = [m for m in values[0] if all(m in v for v in values)]
        results[name] = {
            "epochs": runs[0]["identity"]["experiment"]["train.epochs"],
            "train_seconds": [r["train_seconds"] for r in runs],
            "evaluate_seconds": [r["evaluate_seconds"] for r in runs],
            "metrics": {m: spread([float(v[m]) for v in values], m) for m in shared},
        }

    for name, result in results.items():
        print("\n".join(table(f"{name} ({result['epochs']} epochs)", args.seeds, result["metrics"])))
    if args.write:
        environment = {
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "device": str(device()),
        }
        record = {
            "command": "python benchmarks/seed_spread.py " + " ".join(_argv_shown(args)),
            "rule": TOLERANCE_RULE,
            "seeds": args.seeds,
            "environment": environment,
            "measured": time.strftime("%Y-%m-%d", time.gmtime()),
            "experiments": results,
        }
        write_json(args.write, record)
        print(f"wrote {args.write}")


def _argv_shown(args: argparse.Namespace) -> list[str]:
    out = [f"--experiment {n}" for n in args.experiment or []]
    out += ["--seeds", *map(str, args.seeds)]
    if args.epochs is not None:
        out.append(f"--epochs {args.epochs}")
    return out + [f"--write {args.write}"]


if __name__ == "__main__":
    main()
