"""Standard Inception FID figures on this machine, printed from one run (not part of the test suite).

- Inception feature throughput, fp32 vs bf16 autocast (images/s and their ratio), and how much bf16 moves
  FID/KID (the question: more than 0.1 FID?);
- the MNIST floor: the prepared train split vs the test split (fid_inception and fid_classifier);
- CelebA: the shared faces (../shared/data/celeba), centre-cropped 140x140 and resized to 64x64, split
  into two halves (fid_inception, KID, precision/recall/density/coverage).

    python benchmarks/inception_fid.py --mnist data/prepared/mnist.h5 --celeba ../shared/data/celeba
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan_pipeline.data.loading import load_split, to_float
from gan_pipeline.io import load_module
from gan_pipeline.metrics.inception import InceptionFeatures, inception_features
from gan_pipeline.metrics.prdc import features_of
from gan_pipeline.metrics.suite import feature_metrics, seeded_pick
from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from configs import evaluate_config  # noqa: E402  (params.yaml's values plus overrides)


def timed_features(model, images, bf16):
    start = time.perf_counter()
    features = inception_features(model, images, 50, bf16)
    return features, len(images) / (time.perf_counter() - start)


def faces_64(folder: Path, limit: int | None) -> np.ndarray:
    paths = sorted((folder / "img_align_celeba").glob("*.jpg"))[:limit]
    out = np.empty((len(paths), 64, 64, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:  # 178 x 218: centre 140 x 140, then 64 x 64
            left, top = (im.width - 140) // 2, (im.height - 140) // 2
            out[i] = np.asarray(
                im.convert("RGB").crop((left, top, left + 140, top + 140)).resize((64, 64), Image.BICUBIC)
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mnist", type=Path, default=Path("data/prepared/mnist.h5"))
    parser.add_argument("--classifier", type=Path, default=Path("models/classifier.safetensors"))
    parser.add_argument("--celeba", type=Path, default=Path("../shared/data/celeba"))
    parser.add_argument("--n-mnist", type=int, default=1000, help="images per side for the MNIST floor")
    parser.add_argument("--n-faces", type=int, default=None, help="faces to use (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = evaluate_config(kid_subset_size=1000)  # the KID subsets that docs/benchmarks.md measured with
    model = InceptionFeatures()
    results: dict = {"torch_threads": torch.get_num_threads()}

    test_u8, _ = load_split(args.mnist, "test")
    train_u8, _ = load_split(args.mnist, "train")
    test_u8 = test_u8[seeded_pick(len(test_u8), args.n_mnist, 1234).numpy()]
    train_u8 = train_u8[seeded_pick(len(train_u8), len(test_u8), 1235).numpy()]
    for bf16 in (False, True):
        real, rate_real = timed_features(model, test_u8, bf16)
        fake, rate_fake = timed_features(model, train_u8, bf16)
        tag = "bf16" if bf16 else "fp32"
        results[f"mnist_floor_{tag}"] = feature_metrics("inception", real, fake, cfg)
        results[f"mnist_images_per_s_{tag}"] = (rate_real + rate_fake) / 2
    if args.classifier.is_file():
        classifier, _ = load_module(args.classifier, lambda c: DigitClassifier(c["feature_dim"]))
        feats = ClassifierFeatures(classifier)
        real_c, fake_c = (features_of(feats, to_float(x, (-1.0, 1.0))) for x in (test_u8, train_u8))
        results["mnist_floor_classifier"] = feature_metrics("classifier", real_c, fake_c, cfg)

    if (args.celeba / "img_align_celeba").is_dir():
        faces = faces_64(args.celeba, args.n_faces)
        half = len(faces) // 2
        for bf16 in (False, True):
            features, rate = timed_features(model, faces, bf16)
            tag = "bf16" if bf16 else "fp32"
            results[f"celeba64_halves_{tag}"] = feature_metrics(
                "inception", features[:half], features[half:], cfg
            )
            results[f"celeba64_images_per_s_{tag}"] = rate
    else:
        print(f"{args.celeba}: no CelebA faces there; skipping the face figures")

    for tag in ("mnist_floor", "celeba64_halves"):
        if f"{tag}_fp32" in results:
            delta = results[f"{tag}_bf16"]["fid_inception"] - results[f"{tag}_fp32"]["fid_inception"]
            results[f"{tag}_bf16_minus_fp32_fid"] = delta
    results["bf16_speedup_mnist"] = results["mnist_images_per_s_bf16"] / results["mnist_images_per_s_fp32"]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
