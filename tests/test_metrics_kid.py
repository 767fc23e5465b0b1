import math

import pytest
import torch
from torch import nn

from gan_pipeline.metrics.kid import kid, kid_unbiased_mmd2

PICK = [0, 300, 500, 783]


class Pixels(nn.Module):
    """A feature module that is the identity on four pixels."""

    num_features = len(PICK)

    def forward(self, x):
        return x.flatten(1)[:, PICK].double()


def images(n, seed, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=generator) * 2 - 1 + shift).clamp(-1, 1)


def test_kid_unbiased_mmd2_of_a_hand_made_example():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    # d = 1, k(a, b) = (a b + 1)^3: off-diagonal k(0, 1) = 1 and k(0, 2) = 1 -> 1 + 1 within the sets;
    # across: k(0, 0) = k(0, 2) = k(1, 0) = 1, k(1, 2) = 27 -> mean 7.5. 1 + 1 - 2 * 7.5 = -13: unbiased,
    # so it can be negative.
    assert kid_unbiased_mmd2(x, y) == pytest.approx(-13.0)


@pytest.mark.parametrize("subset_size", [40, 1000])
def test_kid_with_one_subset_of_all_samples_equals_the_reference(subset_size):
    real, fake = images(40, seed=0), images(40, seed=1, shift=0.3)
    expected = kid_unbiased_mmd2(real.flatten(1)[:, PICK], fake.flatten(1)[:, PICK])

    # subset_size 1000 is cut to the 40 samples there are.
    mean, std = kid(Pixels(), real, fake, subset_size=subset_size, subsets=1)

    assert expected > 0.01
    assert mean == pytest.approx(expected, rel=1e-6)
    assert std == 0.0


def test_kid_of_a_set_against_itself_is_near_zero_and_of_a_shifted_set_clearly_larger():
    real = images(200, seed=0)

    same, _ = kid(Pixels(), real, real, subset_size=100, subsets=20)
    shifted, shifted_std = kid(Pixels(), real, images(200, seed=1, shift=0.5), subset_size=100, subsets=20)

    # Not exactly 0: the random subsets differ, and a point drawn on both sides meets itself in the
    # cross term (about -0.015 here, against about 0.7).
    assert shifted > 0.05
    assert abs(same) < 0.05 * shifted
    assert shifted_std > 0


def test_kid_is_deterministic_for_a_seed_and_leaves_the_callers_random_state_alone():
    real, fake = images(60, seed=0), images(60, seed=1, shift=0.2)
    state = torch.random.get_rng_state()

    first = kid(Pixels(), real, fake, subset_size=20, subsets=5, seed=3)
    second = kid(Pixels(), real, fake, subset_size=20, subsets=5, seed=3)
    other = kid(Pixels(), real, fake, subset_size=20, subsets=5, seed=4)

    assert first == second
    assert other != first
    assert torch.equal(torch.random.get_rng_state(), state)


def test_kid_needs_no_num_features_but_two_samples_per_side():
    real = images(6, seed=0)

    mean, _ = kid(nn.Flatten(), real, real[:5], subsets=2)
    assert math.isfinite(mean)
    with pytest.raises(ValueError, match="at least 2"):
        kid(Pixels(), real, real[:1])


@pytest.mark.parametrize("n_real, n_fake, subset_size, subsets", [(300, 250, 100, 7), (1000, 1000, 1000, 3)])
def test_kid_is_bit_identical_to_torchmetrics(n_real, n_fake, subset_size, subsets):
    """The estimate is torchmetrics' KernelInceptionDistance done the same way, to the last bit."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    class Features(nn.Module):  # 64 float64 features of each image
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(5)
            self.project = torch.randn(784, 64, generator=generator, dtype=torch.float64)

        def forward(self, x):
            return x.flatten(1).double() @ self.project

    real, fake = images(n_real, seed=0), images(n_fake, seed=1, shift=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its note that the features are kept in memory
        theirs = KernelInceptionDistance(feature=Features(), subset_size=subset_size, subsets=subsets)
    for images_, is_real in ((real, True), (fake, False)):
        for batch in images_.split(500):
            theirs.update(batch, real=is_real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        their_mean, their_std = theirs.compute()

    mean, std = kid(Features(), real, fake, subset_size=subset_size, subsets=subsets, seed=11)
    assert mean > 0 and (mean, std) == (their_mean.item(), their_std.item())
