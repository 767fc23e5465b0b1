"""Which stabilisers pay? Train one experiment of params.yaml as the baseline, with each stabiliser alone and
with combined recipes, over several training seeds at one budget of images seen, and score every run as
the train (keep-best included), sample and evaluate stages do. Prints per variant the mean ± std over the
seeds of fid_inception (N samples vs N test digits), fid_classifier, digit coverage and (conditional models)
label accuracy, the kept check's step and the training seconds, as a Markdown table.

    python benchmarks/quality.py --experiment dcgan28 --images 40000 --jobs 2        # the default variants
    python benchmarks/quality.py --experiment cgan --variant baseline \\
        --variant hinge_sn=train.loss=hinge,model.spectral_norm=true --seeds 0 1 --images 8000

A variant is NAME=KEY=VALUE[,KEY=VALUE...] with keys under experiments.<experiment> and YAML values
(benchmarks/variants.py's grammar); without --variant, DEFAULT_VARIANTS. `--images` sets train.epochs to
the whole epochs that see at least that many training images. Needs `dvc repro reference` first
(data/prepared/mnist.h5, models/classifier.safetensors, metrics/classifier.json and the reference features).
Every finished run goes into `--cache` at once (keyed by its params and inputs), so the same command started
again after a kill goes on with the runs still missing. `--jobs N` trains N runs at once, one torch thread
each (on a 2-core CPU, two at one thread beat one at two). Nothing is logged to MLflow.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_spread import add_input_args, identity, run_once  # noqa: E402 -- the benchmarks' folder, put on the path above
from variants import parse_variant  # noqa: E402

from gan_pipeline.config import Params, parse_params  # noqa: E402
from gan_pipeline.data.loading import load_split  # noqa: E402
from gan_pipeline.io import read_json, write_json  # noqa: E402
from gan_pipeline.provenance import file_md5  # noqa: E402

# Each stabiliser alone, at the settings their papers use for small images, and two combinations.
DEFAULT_VARIANTS = [
    "baseline",
    "ema=train.ema_decay=0.995,train.ema_warmup_steps=100",
    "hinge_sn=train.loss=hinge,model.spectral_norm=true",
    "r1=train.r1_gamma=0.1,train.r1_every=16",
    "rpgan=train.loss=rpgan,train.r1_gamma=0.1,train.r1_every=16,train.betas=[0.0,0.99]",
    "diffaugment=train.diffaugment=color,translation,cutout",
    "ttur=train.lr=0.0001,train.lr_d=0.0004",
    "batch32=train.batch_size=32",
    "bf16=train.precision=auto",
    "hinge_sn_ema_da=train.loss=hinge,model.spectral_norm=true,train.ema_decay=0.995,"
    "train.ema_warmup_steps=100,train.diffaugment=translation,cutout",
]
COLUMNS = ("fid_inception", "fid_classifier", "coverage", "label_accuracy", "best_step")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="a key of experiments in params.yaml")
    p.add_argument("--variant", action="append", help="NAME=KEY=VALUE[,...] (repeatable; default: a set)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    p.add_argument("--images", type=int, help="training images seen (default: params.yaml's epochs)")
    p.add_argument("--n", type=int, default=1000, help="samples scored (sample.n_samples; >= inception_n)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one torch thread each")
    p.add_argument("--cache", type=Path, default=Path("benchmarks/quality.cache.json"))
    add_input_args(p)
    return p


def variant_params(
    args: argparse.Namespace, overrides: dict[str, Any], seed: int, epochs: int | None
) -> Params:
    """params.yaml with the variant's keys under experiments.<experiment>, the seed, the epochs and N."""
    raw = yaml.safe_load(args.params.read_text())
    exp = raw["experiments"][args.experiment]
    for key, value in {**overrides, "train.seed": seed}.items():
        section, _, name = key.partition(".")
        exp.setdefault(section, {})[name] = value
    if epochs is not None:
        exp.setdefault("train", {})["epochs"] = epochs
    raw["sample"]["n_samples"] = args.n  # fid_inception takes the first evaluate.inception_n of them
    return parse_params(raw, f"{args.params} ({args.experiment}, {overrides}, seed {seed})")


def _run(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    """One run in a worker process at one torch thread: its metrics (with the kept check's best_step) and
    seconds."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="quality_") as work:
        run = run_once(args, params, args.experiment, Path(work))
        with open(Path(work) / "eval_log.csv", newline="") as f:
            kept = [row for row in csv.DictReader(f) if row["best"] == "1"]
    metrics = dict(run["metrics"])
    if kept:
        metrics["best_step"] = int(kept[-1]["step"])
    return {
        "metrics": metrics,
        "train_seconds": run["train_seconds"],
        "evaluate_seconds": run["evaluate_seconds"],
    }


def summary(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {std:.2g}"


def main() -> None:
    args = parser().parse_args()
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    epochs = None
    if args.images is not None:
        n_train = len(load_split(args.data, "train")[1])
        epochs = math.ceil(args.images / n_train)
    inputs = {str(p): file_md5(p) for p in (args.data, args.classifier, args.inception_reference)}
    cache = read_json(args.cache) if args.cache.exists() else {}
    todo, keys = {}, {}
    for name, overrides in variants:
        for seed in args.seeds:
            params = variant_params(args, overrides, seed, epochs)
            key = f"{args.experiment} {name} seed {seed}"
            want = identity(params, args.experiment, inputs)
            keys[(name, seed)] = key
            if cache.get(key, {}).get("identity") != want:
                todo[key] = (params, want)
    print(f"{len(keys) - len(todo)} runs cached, {len(todo)} to train", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run, args, params): key for key, (params, _) in todo.items()}
        for future in as_completed(futures):
            key = futures[future]
            cache[key] = {"identity": todo[key][1], **future.result()}
            write_json(args.cache, cache)
            run = cache[key]
            fid = run["metrics"].get("fid_inception", float("nan"))
            seconds = f"train {run['train_seconds']} s, evaluate {run['evaluate_seconds']} s"
            print(f"{key}: {seconds}, fid_inception {fid:.2f}", flush=True)
    print(f"wall {time.perf_counter() - start:.0f} s for {len(todo)} runs ({args.jobs} at once)")

    first = cache[keys[(variants[0][0], args.seeds[0])]]
    budget = first["identity"]["experiment"]["train.epochs"]
    print(f"\n{args.experiment}: {budget} epochs, seeds {', '.join(map(str, args.seeds))}, N = {args.n}\n")
    columns = [c for c in COLUMNS if c in first["metrics"]]
    print("| variant | " + " | ".join(columns) + " | train s |")
    print("|" + " --- |" * (len(columns) + 2))
    for name, _ in variants:
        runs = [cache[keys[(name, seed)]] for seed in args.seeds]
        cells = [summary([float(r["metrics"][c]) for r in runs if c in r["metrics"]]) for c in columns]
        cells.append(summary([r["train_seconds"] for r in runs]))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
