"""Scoring one experiment's samples against the prepared test split, for digits and faces alike.

The kind of the prepared file chooses what is scored: digits get the classifier's features (FID beside
its real-vs-real floor, KID, PRDC, coverage, and for conditional models label accuracy and intra-class FID)
and the standard Inception metrics against the reference stage's test features; faces get the Inception
metrics against seeded test faces of the prepared file given (params.yaml's `references` names it: the
experiment's own data or another face dataset) and the per-channel sanity line. The digits' real
Inception features are the reference stage's (`metrics.reference`), computed once for every evaluate. The
scores, what describes them and the per-digit rows come apart (`Evaluation`), as the evaluate stage writes
them: the DVC metrics, an info file and a DVC plot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan_pipeline.config import EvaluateConfig
from gan_pipeline.data.loading import load_split, to_float
from gan_pipeline.data.sources import IMAGE_SHAPE
from gan_pipeline.data.streaming import face_counts, is_face_file, read_faces
from gan_pipeline.errors import DataError
from gan_pipeline.io import load_module
from gan_pipeline.metrics.coverage import digit_report, label_accuracy
from gan_pipeline.metrics.faces import channel_report
from gan_pipeline.metrics.fid import intra_class_fid
from gan_pipeline.metrics.inception import InceptionFeatures, inception_features, resolve_precision
from gan_pipeline.metrics.prdc import features_of
from gan_pipeline.metrics.reference import load_reference
from gan_pipeline.metrics.suite import FEATURE_BACKENDS, feature_metrics, seeded_pick, split_sample_sizes
from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier
from gan_pipeline.runtime import device, progress_line
from gan_pipeline.sampling import load_samples
from gan_pipeline.training.classifier import predict_proba

__all__ = ["Evaluation", "evaluate_samples", "rank_note", "summary"]

# Inception's pool3 features have 2048 dimensions and the covariance of n images has rank at most n - 1, so
# on 2,048 images or fewer a side's covariance is singular: FID is then mostly small-sample bias, comparable
# only at equal n.
INCEPTION_DIM = 2048
RANK_NOTE = (
    "FID on fewer than 2,049 images is rank-deficient (the 2048x2048 covariance of n images has rank at "
    "most n - 1 < 2048)"
)


@dataclass
class Evaluation:
    """What evaluate writes: `metrics`, the scores alone (numbers: the DVC metrics, also logged to MLflow);
    `info`, what describes them (sample sizes, prdc_nearest_k, each feature backend, Inception throughput);
    for digits `classes`, one row per digit 0..9: `digit`, `count` (samples classified as it with
    confidence >= evaluate.coverage_confidence) and for conditional models `fid_classifier` (its
    intra-class FID; "" where the digit was not scored)."""

    metrics: dict[str, float | int]
    info: dict[str, Any]
    classes: list[dict[str, Any]] | None = None


def evaluate_samples(
    data: Path,
    samples: Path,
    cfg: EvaluateConfig,
    sample_seed: int,
    classifier: Path | None = None,
    classifier_floor: float | None = None,
    reference: Path | None = None,
) -> Evaluation:
    """The evaluation of the sample stage's `samples` file against the test split of the prepared file
    `data`: digit files need the `classifier` weights, its metrics' floor and the reference stage's
    features; face files need none of them (`sample_seed` picks their test faces).
    """
    if is_face_file(data):
        return _face_metrics(data, samples, cfg, sample_seed)
    if classifier is None or classifier_floor is None or reference is None:
        raise DataError(
            f"{data}: digits are scored with the classifier and the Inception reference, got none "
            "(pass --classifier, --classifier-metrics and --inception-reference)"
        )
    metrics, classes, fake_u8 = _digit_metrics(data, samples, cfg, classifier, classifier_floor)
    info: dict[str, Any] = {}
    if cfg.inception_n > 0:
        precision = resolve_precision(cfg.inception_precision, device())
        real = load_reference(reference, cfg, precision)  # before Inception loads
        metrics.update(_inception_metrics(real, fake_u8, cfg, precision))
        info["inception_precision"] = precision
    scores, sizes = split_sample_sizes(metrics)
    info = {
        "sample_sizes": sizes,
        "prdc_nearest_k": cfg.prdc_nearest_k,
        "feature_backend": {k: v for k, v in FEATURE_BACKENDS.items() if f"fid_{k}" in scores},
        **info,
    }
    return Evaluation(scores, info, classes)


def _digit_metrics(
    data: Path, samples: Path, cfg: EvaluateConfig, classifier_path: Path, floor: float
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """The classifier-feature metrics of the samples, the per-digit rows, and the samples."""
    fake_u8, labels = load_samples(samples, image_shape=IMAGE_SHAPE)  # before any model loads
    classifier, _ = load_module(classifier_path, lambda c: DigitClassifier(c["feature_dim"]))
    requested = torch.from_numpy(labels) if labels is not None else None
    fake = to_float(fake_u8, (-1.0, 1.0))
    real_u8, real_labels = load_split(data, "test")
    real = to_float(real_u8, (-1.0, 1.0))
    features = ClassifierFeatures(classifier)
    progress_line(f"classifier: {len(fake):,} samples and {len(real):,} test digits")
    probs = predict_proba(classifier, fake)
    report = digit_report(probs, cfg.coverage_confidence, cfg.coverage_min_fraction)
    histogram = report.pop("class_histogram")
    metrics = {
        **feature_metrics("classifier", features_of(features, real), features_of(features, fake), cfg),
        "fid_classifier_real_floor": floor,
        **report,
    }
    classes = [{"digit": int(digit), "count": count} for digit, count in histogram.items()]
    if requested is not None:
        metrics["label_accuracy"] = label_accuracy(probs, requested)
        progress_line("classifier features: intra-class FID of each digit")
        per_class = intra_class_fid(features, real, torch.from_numpy(real_labels).long(), fake, requested)
        metrics["fid_classifier_intra_class"] = per_class.pop("mean")
        for row in classes:
            row["fid_classifier"] = per_class.get(str(row["digit"]), "")
    return metrics, classes, fake_u8


def _inception_metrics(
    real: torch.Tensor, fake_u8: np.ndarray, cfg: EvaluateConfig, precision: str
) -> dict[str, Any]:
    """fid_inception, kid_inception and prdc_inception_* of the first inception_n samples vs `real`."""
    model = InceptionFeatures(cfg.inception_weights).to(device())
    fake = inception_features(
        model, fake_u8[: cfg.inception_n], cfg.inception_batch_size, precision, "inception: samples"
    )
    return feature_metrics("inception", real, fake, cfg)


def _face_metrics(data: Path, samples: Path, cfg: EvaluateConfig, seed: int) -> Evaluation:
    """Inception metrics of the first inception_n samples vs as many seeded test faces of `data` (the
    reference set), and the per-channel mean/std of every sample vs as many other seeded test faces; the
    info names the reference set, how many of its images were scored and, beside an FID of fewer than
    INCEPTION_DIM + 1 images on a side, RANK_NOTE."""
    fake, _ = load_samples(samples)
    _, n_test, _ = face_counts(data)
    real = read_faces(data, "test", indices=seeded_pick(n_test, len(fake), seed).numpy())
    if fake.ndim != 4 or fake.shape[1:] != real.shape[1:]:
        raise DataError(f"{samples}: samples are {fake.shape[1:]}, but {data} holds {real.shape[1:]}")
    metrics: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if cfg.inception_n > 0:
        pick = seeded_pick(n_test, cfg.inception_n, seed + 1).numpy()
        model = InceptionFeatures(cfg.inception_weights).to(device())
        precision = resolve_precision(cfg.inception_precision, device())
        start = time.perf_counter()
        real_f = inception_features(model, read_faces(data, "test", indices=pick),
                                    cfg.inception_batch_size, precision, "inception: test faces")  # fmt: skip
        fake_f = inception_features(
            model, fake[: cfg.inception_n], cfg.inception_batch_size, precision, "inception: samples"
        )
        rate = (len(real_f) + len(fake_f)) / (time.perf_counter() - start)
        metrics.update(feature_metrics("inception", real_f, fake_f, cfg))
        if note := rank_note(len(real_f), len(fake_f)):
            info["fid_inception_note"] = note
        info.update(
            prdc_nearest_k=cfg.prdc_nearest_k,
            feature_backend={"inception": FEATURE_BACKENDS["inception"]},
            inception_precision=precision,
            inception_images_per_s=rate,
        )
    metrics.update(channel_report(real, fake))
    scores, sizes = split_sample_sizes(metrics)
    reference = {
        "data": str(data),
        "split": "test",
        "n_test": n_test,
        "n_scored_inception": sizes.get("fid_inception_n_real", 0),
        "n_scored_channel": sizes["channel_n_real"],
    }
    return Evaluation(scores, {"sample_sizes": sizes, "reference": reference, **info})


def rank_note(n_real: int, n_fake: int) -> str | None:
    """RANK_NOTE when a side of an Inception FID has INCEPTION_DIM images or fewer (its covariance is then
    singular), else None."""
    return RANK_NOTE if min(n_real, n_fake) <= INCEPTION_DIM else None


def summary(name: str, result: Evaluation, inception_n: int) -> list[str]:
    """The lines evaluate prints for experiment `name`: for digits every score (floats to 4 places) and the
    class histogram; for faces the Inception metrics and the per-channel sanity line."""
    m, n, info = result.metrics, result.info["sample_sizes"], result.info
    if result.classes is not None:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
        counts = [row["count"] for row in result.classes]
        return [f"{name}: {shown}", f"{name}: confident samples per digit 0..9: {counts}"]
    where = info["reference"]["data"]
    if inception_n > 0:
        lines = [
            f"{name}: fid_inception {m['fid_inception']:.2f}, kid_inception {m['kid_inception']:.4f} ± "
            f"{m['kid_inception_std']:.4f}, precision/recall {m['prdc_inception_precision']:.3f}/"
            f"{m['prdc_inception_recall']:.3f} ({n['fid_inception_n_fake']} samples vs "
            f"{n['fid_inception_n_real']} test faces of {where}, "
            f"{info['inception_images_per_s']:.1f} images/s)"
        ]
        if "fid_inception_note" in info:
            lines.append(f"{name}: {info['fid_inception_note']}")
    else:
        lines = [f"{name}: evaluate.inception_n is 0: no Inception metrics"]

    def rgb(key: str) -> list[float]:
        return [round(m[f"{key}_{c}"], 3) for c in "rgb"]

    lines.append(
        f"{name}: per-channel mean (r, g, b) samples {rgb('channel_mean_fake')} vs real "
        f"{rgb('channel_mean_real')}; std samples {rgb('channel_std_fake')} vs real "
        f"{rgb('channel_std_real')} ({n['channel_n_fake']} samples, {n['channel_n_real']} test faces of "
        f"{where})"
    )
    return lines
