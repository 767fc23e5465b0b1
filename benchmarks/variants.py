"""Train one experiment of params.yaml in several variants (param overrides) on the prepared MNIST and score
each the way the evaluate stage does: fid_classifier, kid_classifier, precision/recall/density/coverage on
the classifier's features, digit coverage and the class-histogram KL. Prints one table, measured in one run.

    python benchmarks/variants.py --experiment dcgan28 \\
        --variant baseline --variant ema=train.ema_decay=0.99 \\
        --variant wgan_gp=train.loss=wgan_gp,train.lr=0.0001,train.betas=[0.0,0.9],train.d_steps=5

Needs `dvc repro prepare classifier` first (data/prepared/mnist.h5, models/classifier.safetensors). A variant
is NAME=KEY=VALUE[,KEY=VALUE...] with keys under experiments.<experiment> and YAML values; `baseline` alone
is the experiment as params.yaml has it. `--epochs` overrides train.epochs in every variant.
"""

from __future__ import annotations

import argparse
import copy
import re
import time
from pathlib import Path

import yaml

from gan_pipeline.config import experiment, parse_params
from gan_pipeline.data.loading import load_split, to_float
from gan_pipeline.data.streaming import train_batches
from gan_pipeline.io import load_module
from gan_pipeline.metrics.coverage import digit_report
from gan_pipeline.metrics.prdc import features_of
from gan_pipeline.metrics.suite import feature_metrics
from gan_pipeline.models import GAN_MODELS
from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier
from gan_pipeline.runtime import device
from gan_pipeline.sampling import generate
from gan_pipeline.training.classifier import predict_proba
from gan_pipeline.training.loop import train_gan

COLUMNS = (
    "fid_classifier",
    "kid_classifier",
    "prdc_classifier_precision",
    "prdc_classifier_recall",
    "prdc_classifier_coverage",
    "coverage",
    "kl_from_uniform",
    "train_images_per_s",
    "train_s",
)


def parse_variant(text: str) -> tuple[str, dict]:
    """'name=a.b=1,c=[0.0,0.9]' -> ('name', {'a.b': 1, 'c': [0.0, 0.9]}); 'baseline' -> ('baseline', {});
    a comma item without '=' belongs to the value before it ('d=x.y=color,cutout' -> {'x.y':
    'color,cutout'})."""
    name, _, rest = text.partition("=")
    raw: dict[str, str] = {}
    for item in re.split(r",(?![^\[]*\])", rest) if rest else []:  # commas outside [...]
        key, sep, value = item.partition("=")
        if sep:
            raw[key] = value
        elif raw:  # no '=': the previous value goes on (train.diffaugment=color,translation)
            last = next(reversed(raw))
            raw[last] += f",{item}"
        else:
            raise ValueError(f"variant {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...], got {item!r} first")
    return name, {key: yaml.safe_load(value) for key, value in raw.items()}


def apply(raw_experiment: dict, overrides: dict) -> dict:
    out = copy.deepcopy(raw_experiment)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="dcgan28", help="a key of experiments in params.yaml")
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE[,KEY=VALUE...]")
    parser.add_argument("--epochs", type=int, help="train.epochs for every variant (default: params.yaml's)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared/mnist.h5"))
    parser.add_argument("--classifier", type=Path, default=Path("models/classifier.safetensors"))
    args = parser.parse_args()

    raw = yaml.safe_load(args.params.read_text())
    params = parse_params(raw, str(args.params))
    cfg = params.evaluate
    classifier, _ = load_module(args.classifier, lambda c: DigitClassifier(c["feature_dim"]))
    classifier.to(device())
    features = ClassifierFeatures(classifier)
    real_u8, _ = load_split(args.data, "test")
    real_features = features_of(features, to_float(real_u8, (-1.0, 1.0)).to(device()))

    rows = {}
    for text in args.variant or ["baseline"]:
        name, overrides = parse_variant(text)
        if args.epochs is not None:
            overrides.setdefault("train.epochs", args.epochs)
        variant_raw = copy.deepcopy(raw)
        variant_raw["experiments"][args.experiment] = apply(raw["experiments"][args.experiment], overrides)
        exp = experiment(parse_params(variant_raw, f"variant {name}"), args.experiment)
        spec = GAN_MODELS[exp.model.name]
        batches = train_batches(args.data, spec.value_range, exp.train.batch_size, device())
        start = time.perf_counter()
        result = train_gan(exp, batches)
        seconds = time.perf_counter() - start
        fake_u8, _ = generate(
            result.sampling_generator, spec, exp.model.latent_dim, params.sample.n_samples, params.sample.seed
        )
        fake = to_float(fake_u8, (-1.0, 1.0)).to(device())
        metrics = feature_metrics("classifier", real_features, features_of(features, fake), cfg)
        probs = predict_proba(classifier, fake)
        report = digit_report(probs, cfg.coverage_confidence, cfg.coverage_min_fraction)
        rows[name] = {
            **metrics,
            **report,
            "train_images_per_s": result.images_per_s,
            "train_s": seconds,
        }
        shown = ", ".join(f"{k} {rows[name][k]:.4g}" for k in COLUMNS)
        print(f"{name} ({overrides or 'params.yaml'}): {shown}", flush=True)

    print(f"\n{args.experiment}, {params.sample.n_samples} samples vs {len(real_u8)} test digits")
    print("| variant | " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * (len(COLUMNS) + 1))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4g}" for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
