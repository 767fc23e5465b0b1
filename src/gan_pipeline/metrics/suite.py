"""One set of feature-space metrics per feature backend, under names that say the backend.

For backend `b` ("classifier" or "inception"): fid_b, kid_b and kid_b_std, prdc_b_{precision, recall,
density, coverage}, and the sample sizes beside them (fid_b_n_real, fid_b_n_fake, kid_b_subset_size),
all from the same two feature sets. `real_floor` scores real test images against a seeded pick of real
train images: the floor that generated images are compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from gan_pipeline.config import EvaluateConfig
from gan_pipeline.errors import ParamsError
from gan_pipeline.metrics.fid import PrecomputedFeatures, fid_from_features
from gan_pipeline.metrics.kid import kid
from gan_pipeline.metrics.prdc import prdc
from gan_pipeline.runtime import progress_line

_Test = TypeVar("_Test")
_Score = TypeVar("_Score")

FEATURE_BACKENDS = {
    "classifier": "DigitClassifier penultimate layer (ours; 28x28 in [-1, 1]; not comparable with Inception)",
    "inception": "TF inception-2015-12-05 pool3 2048-d (torch-fidelity network, TF1 bilinear resize to 299)",
}


def feature_metrics(
    backend: str, real: torch.Tensor, fake: torch.Tensor, cfg: EvaluateConfig
) -> dict[str, float | int]:
    """The metrics of fake vs real features (N, D) and (M, D) in backend `backend`'s names.

    Too few samples on a side for PRDC's k-NN balls (config.load checks what the params alone decide; the
    test split's size is known only here) is a ParamsError naming evaluate.prdc_nearest_k."""
    if backend not in FEATURE_BACKENDS:
        raise ValueError(
            f"unknown feature backend {backend!r}, expected one of {', '.join(FEATURE_BACKENDS)}"
        )
    k = cfg.prdc_nearest_k
    for side, features in (("real", real), ("generated", fake)):
        if len(features) <= k:
            raise ParamsError(
                f"evaluate.prdc_nearest_k: expected fewer than the {len(features)} {side} images scored in "
                f"{backend} features (each k-NN ball needs k other images), got {k}"
            )
    progress_line(f"{backend} features: FID, KID and PRDC of {len(fake):,} vs {len(real):,}")
    kid_mean, kid_std = kid(
        PrecomputedFeatures(real.shape[1]), real, fake, cfg.kid_subset_size, cfg.kid_subsets
    )
    return {
        f"fid_{backend}": fid_from_features(real, fake),
        f"fid_{backend}_n_real": len(real),
        f"fid_{backend}_n_fake": len(fake),
        f"kid_{backend}": kid_mean,
        f"kid_{backend}_std": kid_std,
        f"kid_{backend}_subset_size": min(cfg.kid_subset_size, len(real), len(fake)),
        **{f"prdc_{backend}_{k}": v for k, v in prdc(real, fake, cfg.prdc_nearest_k).items()},
    }


# How the names of sample sizes end: feature_metrics's, the floors', channel_report's and the classifier's
# (n_train, n_test, fid_real_floor_n_train, ...).
SAMPLE_SIZE_SUFFIXES = ("_n_real", "_n_fake", "_n_train", "_n_test", "_subset_size")


def split_sample_sizes(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """(the scores, the sample sizes) of a metrics dict, the sizes being the keys that end in one of
    SAMPLE_SIZE_SUFFIXES (or are one without its "_"). Params fix the sizes, so they go beside the scores
    (the info file), not among the DVC metrics that `dvc metrics diff` compares."""
    sizes = {k: v for k, v in metrics.items() if f"_{k}".endswith(SAMPLE_SIZE_SUFFIXES)}
    return {k: v for k, v in metrics.items() if k not in sizes}, sizes


def seeded_pick(n_total: int, n: int, seed: int, *, sort: bool = True) -> torch.Tensor:
    """min(n, n_total) distinct indices in 0..n_total-1, drawn with `seed` (the same every run).

    Sorted by default; `sort=False` keeps them in the order drawn.
    """
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[: min(n, n_total)]
    return order.sort().values if sort else order


def real_floor(
    score: Callable[[_Test, torch.Tensor | np.ndarray], _Score],
    test: _Test,
    train: torch.Tensor | np.ndarray,
    n: int,
    seed: int,
    *,
    sort: bool = True,
) -> tuple[_Score, int]:
    """The real-vs-real floor of a metric: `score(test, train[pick])` and len(pick), for the pick
    seeded_pick(len(train), n, seed, sort=sort) of train images.

    `n` is as many images as evaluate scores per model, so that the floor carries the same small-sample
    bias as the models' scores. `test` goes to `score` as given (images or their features); `train` is
    indexed by the pick, as a tensor or an array. FID's sums depend on the order of the images in their last
    bits, so a floor keeps the order (sorted or as drawn) that its recorded values were computed in.
    """
    pick = seeded_pick(len(train), n, seed, sort=sort)
    picked = train[pick.numpy()] if isinstance(train, np.ndarray) else train[pick]
    return score(test, picked), len(pick)
