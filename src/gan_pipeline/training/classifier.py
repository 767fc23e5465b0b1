"""Training and scoring the digit classifier on real labelled digits."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gan_pipeline.config import ClassifierConfig
from gan_pipeline.errors import DataError
from gan_pipeline.models.classifier import DigitClassifier
from gan_pipeline.runtime import device, module_device, progress, seed_everything


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, cfg: ClassifierConfig
) -> tuple[DigitClassifier, list[dict]]:
    """Train a DigitClassifier on (N, 1, 28, 28) images in [-1, 1] with int64 labels in 0..9.

    Seeded with cfg.seed (init, shuffling and dropout), so on the CPU the same cfg and data give
    bit-identical weights. Returns the model in eval mode on `runtime.device()`, and per epoch
    {"epoch" (from 1), "loss" (mean cross-entropy in nats), "train_accuracy" (in [0, 1])}, both averaged
    over the epoch's batches as they were trained, i.e. with dropout on.
    """
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    generator = seed_everything(cfg.seed)
    dev = device()
    model = DigitClassifier(cfg.feature_dim).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(images)
    batches_per_epoch = -(-n // cfg.batch_size)
    history = []
    model.train()
    with progress(cfg.epochs * batches_per_epoch, "classifier", "batch") as bar:
        for epoch in range(1, cfg.epochs + 1):
            loss_sum = 0.0
            correct = 0
            for idx in torch.randperm(n, generator=generator).split(cfg.batch_size):
                x, y = images[idx].to(dev), labels[idx].to(dev)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
                bar.update()
            history.append({"epoch": epoch, "loss": loss_sum / n, "train_accuracy": correct / n})
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.4f}")
    return model.eval(), history


def _logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, 10) logits on the CPU, computed in batches on the model's device; puts the model in eval mode."""
    if len(images) == 0:
        raise ValueError("got no images")
    dev = module_device(model)
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(batch.to(dev)).cpu() for batch in images.split(batch_size)])


def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Share in [0, 1] of `images` whose predicted digit equals `labels`."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    predicted = _logits(model, images, batch_size).argmax(1)
    return (predicted == labels.cpu()).double().mean().item()


def predict_proba(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(N, 10) softmax probabilities on the CPU for (N, 1, 28, 28) images in [-1, 1]."""
    return _logits(model, images, batch_size).softmax(1)


def check_digits(data: str | Path, train_labels: np.ndarray, test_labels: np.ndarray) -> None:
    """DataError when the train split holds fewer than 2 digits (a classifier of one digit scores accuracy 1.0
    whatever it learns); a warning naming the digits that either split lacks."""
    present = np.unique(train_labels).tolist()
    if len(present) < 2:
        raise DataError(
            f"{data}: the train split holds {len(present)} digit ({', '.join(map(str, present))}) in "
            f"{len(train_labels)} images: the digit classifier needs at least 2 (on one it scores accuracy "
            "1.0 whatever it learns)"
        )
    for split, labels in (("train", train_labels), ("test", test_labels)):
        missing = sorted(set(range(10)) - set(np.unique(labels).tolist()))
        if missing:
            print(
                f"warning: {data}: the {split} split has no images of digit {', '.join(map(str, missing))} "
                f"(the classifier {'never learns' if split == 'train' else 'is not tested on'} them; the "
                "collapse alarm counts the digits of the train split)",
                file=sys.stderr,
            )


def fit_and_score(
    data: str | Path, cfg: ClassifierConfig, n_floor: int
) -> tuple[DigitClassifier, dict[str, float | int], float]:
    """Train the classifier on the prepared file's train split and score it on its test split: the model,
    its metrics (test and last-epoch train accuracy, split sizes, and the real-vs-real FID floor in its
    features: the test split vs `n_floor` seeded train images, as many as evaluate scores generated ones, so
    that floor and models carry the same small-sample bias) and the training time in seconds."""
    from gan_pipeline.data.loading import load_split, to_float
    from gan_pipeline.metrics.fid import fid
    from gan_pipeline.metrics.suite import real_floor
    from gan_pipeline.models.classifier import ClassifierFeatures

    train_u8, train_labels = load_split(data, "train")
    test_u8, test_labels = load_split(data, "test")
    check_digits(data, train_labels, test_labels)
    train_x, test_x = to_float(train_u8, (-1.0, 1.0)), to_float(test_u8, (-1.0, 1.0))
    start = time.perf_counter()
    model, history = train_classifier(train_x, torch.from_numpy(train_labels).long(), cfg)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(model, test_x, torch.from_numpy(test_labels).long())
    features = ClassifierFeatures(model)
    # The train images in the order drawn (not sorted), as the recorded floors were computed.
    floor, n_real = real_floor(
        lambda test, train: fid(features, test, train), test_x, train_x, n_floor, cfg.seed, sort=False
    )
    metrics = {
        "test_accuracy": test_accuracy,
        "train_accuracy": history[-1]["train_accuracy"],
        "n_train": len(train_x),
        "n_test": len(test_x),
        "fid_classifier_real_floor": floor,
        "fid_real_floor_n_train": n_real,
        "fid_real_floor_n_test": len(test_x),
    }
    return model, metrics, seconds
