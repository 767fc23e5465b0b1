import numpy as np
import pytest
import torch
from torch import nn

from gan_pipeline.metrics.fid import fid, frechet_distance, intra_class_fid
from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier


class Pixels(nn.Module):
    """A feature module that is the identity on three pixels."""

    num_features = 3

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return x.flatten(1)[:, [0, 300, 783]].double()


def test_frechet_distance_of_equal_gaussians_is_zero():
    a = np.random.default_rng(0).normal(size=(4, 4))
    sigma = a @ a.T + np.eye(4)
    mu = np.array([1.0, -2.0, 0.5, 3.0])

    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_with_identity_covariances_is_the_squared_mean_shift():
    assert frechet_distance(np.zeros(3), np.eye(3), np.array([1.0, 2.0, 2.0]), np.eye(3)) == pytest.approx(
        9.0
    )


def test_frechet_distance_with_diagonal_covariances_sums_squared_root_differences():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    # (1 - 2)^2 + (2 - 1)^2 + (3 - 0.5)^2 = 8.25, plus the squared mean shift 1
    distance = frechet_distance(np.zeros(3), np.diag(a), np.array([1.0, 0.0, 0.0]), np.diag(b))

    assert distance == pytest.approx(9.25)


def test_frechet_distance_accepts_tensors():
    assert frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2)) == pytest.approx(
        4.0
    )


def test_fid_matches_the_reference_on_the_same_features():
    torch.manual_seed(0)
    real = torch.randn(200, 1, 28, 28).clamp(-1, 1)
    fake = (0.5 * torch.randn(150, 1, 28, 28) + 0.3).clamp(-1, 1)
    pick = [0, 300, 783]
    real_f, fake_f = (x.flatten(1)[:, pick].double().numpy() for x in (real, fake))

    expected = frechet_distance(
        real_f.mean(0), np.cov(real_f, rowvar=False), fake_f.mean(0), np.cov(fake_f, rowvar=False)
    )

    assert expected > 0.1
    assert fid(Pixels(), real, fake, batch_size=64) == pytest.approx(expected, rel=1e-6)


def test_fid_feeds_the_images_unchanged():
    torch.manual_seed(0)
    real, fake = torch.rand(10, 1, 28, 28) * 2 - 1, torch.rand(6, 1, 28, 28) * 2 - 1
    features = Pixels()

    fid(features, real, fake, batch_size=4)

    # No resize to 299x299, no uint8: the module sees our float images in [-1, 1], batch by batch.
    assert [len(x) for x in features.seen] == [4, 4, 2, 4, 2]
    assert torch.equal(torch.cat(features.seen), torch.cat([real, fake]))


def test_fid_of_a_set_against_itself_is_zero_and_of_shifted_sets_positive():
    torch.manual_seed(0)
    features = ClassifierFeatures(DigitClassifier(feature_dim=8))
    images = torch.rand(64, 1, 28, 28) * 2 - 1

    assert fid(features, images, images, batch_size=20) == pytest.approx(0.0, abs=1e-6)
    assert fid(features, images, (images + 0.5).clamp(-1, 1)) > 1e-3


def test_fid_needs_two_samples_per_side():
    images = torch.zeros(3, 1, 28, 28)
    with pytest.raises(ValueError, match="at least 2"):
        fid(Pixels(), images, images[:1])


@pytest.mark.parametrize("n_real, n_fake, batch_size", [(200, 150, 64), (1000, 1000, 500), (7, 3, 2)])
def test_fid_is_bit_identical_to_torchmetrics(n_real, n_fake, batch_size):
    """The statistics are torchmetrics' FrechetInceptionDistance done the same way, to the last bit."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(n_real)
    classifier_features = ClassifierFeatures(DigitClassifier(feature_dim=16))
    real = torch.rand(n_real, 1, 28, 28) * 2 - 1
    fake = (torch.rand(n_fake, 1, 28, 28) * 2 - 1).clamp(-0.8, 1)

    class Wrapped(nn.Module):  # torchmetrics needs num_features, or it probes with a 299x299 uint8 image
        num_features = 16

        def forward(self, x):
            return classifier_features(x)

    theirs = FrechetInceptionDistance(feature=Wrapped())
    for images, is_real in ((real, True), (fake, False)):
        for batch in images.split(batch_size):
            theirs.update(batch, real=is_real)

    ours = fid(classifier_features, real, fake, batch_size=batch_size)
    assert ours > 0 and ours == theirs.compute().item()


def test_intra_class_fid_scores_each_class_present_on_both_sides_and_averages_them():
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(60, 1, 28, 28, generator=generator) * 2 - 1
    fake = torch.rand(50, 1, 28, 28, generator=generator) * 2 - 1
    # Real: 20 each of 0, 1, 2 and 3 (one 3 only). Fake: 15 each of 0 and 1, a shifted 1 (so the classes
    # differ), 5 of 3 and 15 of 4. Class 2 has no fakes, 4 no reals, 3 a single real: only 0 and 1 count.
    real_labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 19 + [3])
    fake_labels = torch.tensor([0] * 15 + [1] * 15 + [3] * 5 + [4] * 15)
    fake[fake_labels == 1] = (fake[fake_labels == 1] + 0.5).clamp(-1, 1)

    scores = intra_class_fid(Pixels(), real, real_labels, fake, fake_labels, batch_size=8)

    expected = {str(c): fid(Pixels(), real[real_labels == c], fake[fake_labels == c]) for c in (0, 1)}
    assert list(scores) == ["0", "1", "mean"]
    assert scores["0"] == pytest.approx(expected["0"], rel=1e-9)
    assert scores["1"] == pytest.approx(expected["1"], rel=1e-9)
    assert scores["1"] > scores["0"] + 0.1
    assert scores["mean"] == pytest.approx((expected["0"] + expected["1"]) / 2, rel=1e-9)


def test_intra_class_fid_needs_a_class_on_both_sides_and_one_label_per_image():
    images = torch.zeros(4, 1, 28, 28)
    with pytest.raises(ValueError, match="found none"):
        intra_class_fid(Pixels(), images, torch.tensor([0, 0, 1, 1]), images, torch.tensor([2, 2, 3, 3]))
    with pytest.raises(ValueError, match="one label per image"):
        intra_class_fid(Pixels(), images, torch.tensor([0, 0, 1]), images, torch.tensor([0, 0, 1, 1]))
