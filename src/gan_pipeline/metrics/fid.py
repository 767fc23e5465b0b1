"""FID: the Fréchet distance between Gaussians fitted to features.

`fid(features, real, fake)` feeds images to a feature module; `fid_from_features` takes features already
computed (the Inception ones, which are too costly to compute twice). Classifier FID uses the penultimate
layer of our own DigitClassifier, fed the 28x28 images as they are (float in [-1, 1], no resize, no uint8
quantisation): it is not Inception FID and is not comparable with it, since FID depends on the feature
network. Like every FID it is biased upwards for small N, so the sample sizes are recorded beside it.

The statistics are torchmetrics' `FrechetInceptionDistance` computed the same way, operation for operation
(float64 sums and cross-products accumulated batch by batch, covariances with N - 1, the trace of the
square root from the eigenvalues of sigma1 @ sigma2), so its results are bit-identical to it; the tests
check that against torchmetrics itself. Importing torchmetrics costs every stage process ~4 s (it loads
torchvision), which is why it is not imported here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.linalg
import torch
from torch import nn

from gan_pipeline.runtime import module_device

FID_CLASSIFIER_IMPLEMENTATION = (
    "torchmetrics FrechetInceptionDistance with DigitClassifier penultimate features; "
    "28x28 float input in [-1, 1], no resize, no uint8; covariances with N - 1"
)


def fid_from_features(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID between feature sets (N, D) and (M, D) already computed (e.g. Inception features)."""
    return fid(PrecomputedFeatures(real_features.shape[1]), real_features, fake_features)


class PrecomputedFeatures(nn.Module):
    """The identity on (N, D) features, for feeding precomputed features to fid and kid."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Moments:
    """Running float64 sum and cross-product sum of (N, D) features, torchmetrics' FID state."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.n = 0

    def add(self, features: torch.Tensor) -> None:
        features = features.double()
        if features.dim() == 1:
            features = features.unsqueeze(0)
        if self.sum is None:
            d = features.shape[1]
            self.sum = torch.zeros(d, dtype=torch.float64, device=features.device)
            self.cross = torch.zeros(d, d, dtype=torch.float64, device=features.device)
        self.sum += features.sum(dim=0)
        self.cross += features.t().mm(features)
        self.n += len(features)

    def mean_and_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.sum is not None and self.cross is not None
        n = torch.tensor(self.n, device=self.sum.device)  # a long tensor, as torchmetrics' count is
        mean = (self.sum / n).unsqueeze(0)
        cov = (self.cross - n * mean.t().mm(mean)) / (n - 1)
        return mean.squeeze(0), cov


def fid(features: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 500) -> float:
    """Fréchet distance of the `features` statistics of `real` and `fake` (e.g. (N, 1, 28, 28) in [-1, 1]).

    `features` maps images, fed unchanged (no resize, no uint8), to (N, D). Images go in batches to the
    device of `features`' parameters (the CPU when it has none); the statistics are float64.
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 real and 2 fake samples, got {len(real)} and {len(fake)}")
    dev = module_device(features)
    moments = {True: _Moments(), False: _Moments()}
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for batch in images.split(batch_size):
                moments[is_real].add(features(batch.to(dev)))
    (mu1, sigma1), (mu2, sigma2) = moments[True].mean_and_cov(), moments[False].mean_and_cov()
    a = (mu1 - mu2).square().sum(dim=-1)
    b = sigma1.trace() + sigma2.trace()
    c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(dim=-1)
    return (a + b - 2 * c).item()


def frechet_distance(
    mu1: npt.ArrayLike, sigma1: npt.ArrayLike, mu2: npt.ArrayLike, sigma2: npt.ArrayLike
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) in float64, with scipy's sqrtm.

    The reference that fid is tested against; arguments are arrays or CPU tensors.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (fewer samples than features) can defeat sqrtm; nudge both off singularity.
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    # For covariance matrices the square root is real; an imaginary part is round-off.
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def intra_class_fid(
    features: nn.Module,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    fake: torch.Tensor,
    fake_labels: torch.Tensor,
    batch_size: int = 500,
) -> dict[str, float]:
    """fid_classifier per class, for conditional GANs: fakes requested as digit c vs the real images of c.

    Labels are (N,) ints beside the (N, 1, 28, 28) images. Only classes with >= 2 samples on both sides
    are scored; the result maps each scored class, as a string ("0", "3", ...), to its FID, and "mean" to
    the mean over those classes. Each class has about 1/10 of the samples, so the bias of FID for small N
    is larger than for the overall score: record the per-class sample sizes beside it.
    """
    real_labels, fake_labels = torch.as_tensor(real_labels), torch.as_tensor(fake_labels)
    if real_labels.shape != (len(real),) or fake_labels.shape != (len(fake),):
        raise ValueError(
            f"expected one label per image, got {len(real)} real images with labels of shape "
            f"{tuple(real_labels.shape)} and {len(fake)} fake images with labels of shape "
            f"{tuple(fake_labels.shape)}"
        )
    scores: dict[str, float] = {}
    for label in sorted(set(real_labels.tolist()) & set(fake_labels.tolist())):
        real_of = real[(real_labels == label).to(real.device)]
        fake_of = fake[(fake_labels == label).to(fake.device)]
        if len(real_of) >= 2 and len(fake_of) >= 2:
            scores[str(label)] = fid(features, real_of, fake_of, batch_size=batch_size)
    if not scores:
        raise ValueError("intra-class FID needs a class with at least 2 real and 2 fake samples, found none")
    return {**scores, "mean": sum(scores.values()) / len(scores)}
