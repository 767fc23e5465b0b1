"""Precision, recall, density and coverage of generated samples, from k-nearest-neighbour balls of features.

Precision and recall follow Kynkäänniemi et al. 2019 ("Improved Precision and Recall Metric for Assessing
Generative Models"), density and coverage Naeem et al. 2020 ("Reliable Fidelity and Diversity Metrics for
Generative Models"), as in the authors' reference code (clovaai/generative-evaluation-prdc). Each point's
radius is the distance to its `nearest_k`-th nearest neighbour in its own set, the point itself excluded,
and "inside a ball" means strictly closer than its radius:

- precision: share of fake points inside at least one real ball;
- recall: share of real points inside at least one fake ball;
- density: mean over fake points of (how many real balls hold it) / nearest_k; 1 for identical sets, can
  exceed 1;
- coverage: share of real points whose own ball holds at least one fake point.

`coverage` here is not our digit coverage (`metrics.coverage`, how many digit classes a generator draws), so
the evaluate stage stores these four as `prdc_precision`, `prdc_recall`, `prdc_density` and `prdc_coverage`.
Like FID they depend on the feature extractor (ours: the digit classifier's penultimate layer, not Inception)
and on the sample sizes (scores from different extractors or N are not comparable), so record both
beside the scores.
"""

from __future__ import annotations

import torch
from torch import nn

from gan_pipeline.runtime import module_device

PRDC_IMPLEMENTATION = (
    "k-NN balls (self excluded, strict <) on DigitClassifier penultimate features, float64 Euclidean "
    "distances by torch.cdist's matmul, every comparison within rounding of its radius decided again on "
    "the direct-difference distance (the results of torch.cdist's exact mode)"
)

# The matmul distances (|x|^2 + |y|^2 - 2 x.y) are several times faster than direct differences but off in
# their last bits: a duplicate's distance comes out ~1e-8 |x| instead of 0. Each comparison whose squared
# distance lies within this share of |x|^2 + |y|^2 of its radius squared (some 200 times the worst float64
# rounding of a 2,048-wide dot product) is decided again on the exact distance, so that every "< radius"
# comes out as with exact distances, ties included.
_UNSURE = 1e-10

# Elements of one float64 block of distances: 2**23 * 8 bytes = 64 MiB, whatever the set sizes.
_BLOCK_ELEMENTS = 2**23


def features_of(module: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """`module`'s features of `images`, (N, D) float64 on the CPU, computed in batches without autograd.

    Batches go to the device of `module`'s parameters (the CPU when it has none). The module is used in
    whatever mode it is in; ClassifierFeatures is always in eval mode.
    """
    dev = module_device(module)
    with torch.inference_mode():
        return torch.cat([module(batch.to(dev)).double().cpu() for batch in images.split(batch_size)])


def _distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(len(x), len(y)) distances by the matmul |x|^2 + |y|^2 - 2 x.y: fast, right to within _UNSURE (see
    `_settled`)."""
    return torch.cdist(x, y, compute_mode="use_mm_for_euclid_dist")


def _exact(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(P,) distances of the pairs x[i], y[i] by direct differences, the same kernel (and bits) as
    torch.cdist's exact mode on whole sets."""
    return torch.cdist(x[:, None], y[:, None], compute_mode="donot_use_mm_for_euclid_dist").flatten()


def _settled(block: torch.Tensor, x: torch.Tensor, y: torch.Tensor, radii: torch.Tensor,
             bound: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """`block` (distances of x's rows to y's) with each entry whose square lies within `bound` (_UNSURE
    times the largest |x|^2 + |y|^2) of its radius squared (`radii`, broadcast against the block: (rows, 1)
    or (1, cols)) replaced by the direct-difference distance, in place."""
    rows, cols = ((block.square() - radii.square()).abs_() <= bound).nonzero(as_tuple=True)
    if len(rows):
        block[rows, cols] = _exact(x[rows], y[cols])
    return block


def _row_blocks(n_rows: int, n_cols: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _knn_radii(features: torch.Tensor, sq: torch.Tensor, nearest_k: int) -> torch.Tensor:
    """(N,) distance of each row to its nearest_k-th nearest other row (`sq`: the rows' squared norms)."""
    n = len(features)
    radii = torch.empty(n, dtype=features.dtype, device=features.device)
    for start, stop in _row_blocks(n, n):
        block = _distances(features[start:stop], features)
        # (rows, N); a point is not its own neighbour (a duplicate of it is).
        rows = torch.arange(stop - start, device=features.device)
        block[rows, rows + start] = torch.inf
        # the entries near each row's k-th are made exact; the rest keep their order around it
        kth = block.kthvalue(nearest_k, dim=1).values
        bound = _UNSURE * (sq[start:stop].max() + sq.max())
        block = _settled(block, features[start:stop], features, kth[:, None], bound)
        radii[start:stop] = block.kthvalue(nearest_k, dim=1).values
    return radii


def _check_features(name: str, features: torch.Tensor, nearest_k: int) -> torch.Tensor:
    if features.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got shape {tuple(features.shape)}")
    if len(features) <= nearest_k:
        raise ValueError(
            f"{name}: nearest_k = {nearest_k} needs at least {nearest_k + 1} samples, got {len(features)}"
        )
    return features.double()


def prdc(real_features: torch.Tensor, fake_features: torch.Tensor, nearest_k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of fake vs real features, (N, D) and (M, D), as floats.

    Precision, recall and coverage lie in [0, 1]; density in [0, N / nearest_k]. Distances are float64
    and computed in blocks of 64 MiB, so 10,000 x 10,000 samples need a few hundred MB at most.
    """
    if not (isinstance(nearest_k, int) and nearest_k >= 1):
        raise ValueError(f"nearest_k: expected an int >= 1, got {nearest_k!r}")
    real = _check_features("real_features", real_features, nearest_k)
    fake = _check_features("fake_features", fake_features, nearest_k).to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in width: {real.shape[1]} vs {fake.shape[1]}")

    real_sq, fake_sq = real.square().sum(1), fake.square().sum(1)
    real_radii = _knn_radii(real, real_sq, nearest_k)
    fake_radii = _knn_radii(fake, fake_sq, nearest_k)
    # Per fake point, how many real balls hold it; per real point, whether a fake ball holds it and
    # whether its own ball holds a fake point.
    real_balls_holding = torch.zeros(len(fake), dtype=torch.int64, device=real.device)
    in_fake_ball = torch.empty(len(real), dtype=torch.bool, device=real.device)
    ball_holds_fake = torch.empty(len(real), dtype=torch.bool, device=real.device)
    for start, stop in _row_blocks(len(real), len(fake)):
        block = _distances(real[start:stop], fake)
        # (rows, M), each entry exact where it is near the radius it is compared with
        bound = _UNSURE * (real_sq[start:stop].max() + fake_sq.max())
        block = _settled(block, real[start:stop], fake, real_radii[start:stop, None], bound)
        in_real_ball = block < real_radii[start:stop, None]
        real_balls_holding += in_real_ball.sum(dim=0)
        block = _settled(block, real[start:stop], fake, fake_radii[None, :], bound)
        in_fake_ball[start:stop] = (block < fake_radii[None, :]).any(dim=1)
        ball_holds_fake[start:stop] = in_real_ball.any(dim=1)

    return {
        "precision": (real_balls_holding > 0).double().mean().item(),
        "recall": in_fake_ball.double().mean().item(),
        "density": real_balls_holding.double().mean().item() / nearest_k,
        "coverage": ball_holds_fake.double().mean().item(),
    }
