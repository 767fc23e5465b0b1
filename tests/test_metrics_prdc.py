import pytest
import torch
from torch import nn

from gan_pipeline.metrics import prdc as prdc_module
from gan_pipeline.metrics.prdc import features_of, prdc


def column(*values):
    """1-D points as an (N, 1) feature matrix."""
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_prdc_of_a_hand_made_1d_example():
    real = column(1, 2, 4, 7)
    fake = column(4.5, 5, 7.5, 14)
    # k = 1, radii = distance to the nearest other point of the same set:
    #   real 1, 2, 4, 7 -> 1, 1, 2, 3;   fake 4.5, 5, 7.5, 14 -> 0.5, 0.5, 2.5, 6.5
    # Real balls holding each fake point (|fake - real| < real radius):
    #   4.5: 4 (0.5 < 2), 7 (2.5 < 3);  5: 4 (1 < 2), 7 (2 < 3);  7.5: 7 (0.5 < 3);  14: none
    #   -> precision 3/4, density (2 + 2 + 1 + 0) / (1 * 4) = 5/4
    # Real points inside a fake ball: only 7 (in 7.5's, 0.5 < 2.5); 4 sits exactly on 4.5's radius 0.5,
    # which does not count -> recall 1/4
    # Real balls holding a fake point: 4's (4.5) and 7's (7.5) -> coverage 2/4
    assert prdc(real, fake, nearest_k=1) == {
        "precision": 0.75,
        "recall": 0.25,
        "density": 1.25,
        "coverage": 0.5,
    }


def test_prdc_of_identical_sets_is_one_everywhere():
    features = torch.randn(60, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    scores = prdc(features, features.clone(), nearest_k=5)

    # Each real ball holds its own centre and the k - 1 neighbours strictly inside it (the k-th lies on the
    # boundary), so the fake copies are counted k * N times in all: density exactly 1 (with the point
    # itself as a neighbour it would be (k - 1) / k, with "<=" (k + 1) / k).
    assert scores == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_prdc_of_a_fake_set_far_from_the_reals_is_zero():
    real = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    fake = torch.randn(30, 3, generator=torch.Generator().manual_seed(1)) + 1000

    assert prdc(real, fake) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_of_fakes_from_one_of_two_real_clusters_has_full_precision_and_at_most_half_recall():
    generator = torch.Generator().manual_seed(0)
    cluster_a = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    cluster_b = torch.randn(50, 2, generator=generator, dtype=torch.float64) + 100
    real = torch.cat([cluster_a, cluster_b])

    scores = prdc(real, cluster_a[:20], nearest_k=5)

    # Every fake point is a real point, at distance 0 from its own real ball's centre.
    assert scores["precision"] == 1.0
    # Cluster B is 100 away from every fake point and ball; the 20 copied reals count for both.
    assert 0.2 <= scores["recall"] <= 0.5
    assert 0.2 <= scores["coverage"] <= 0.5


def test_prdc_in_small_blocks_equals_prdc_in_one_block(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(70, 3, generator=generator, dtype=torch.float64)
    fake = torch.randn(50, 3, generator=generator, dtype=torch.float64) * 1.3 + 0.4
    whole = prdc(real, fake, nearest_k=3)

    # 100 elements: blocks of 1 or 2 rows, so the self-exclusion offsets and accumulations are exercised.
    monkeypatch.setattr(prdc_module, "_BLOCK_ELEMENTS", 100)

    assert prdc(real, fake, nearest_k=3) == whole
    assert 0 < whole["precision"] < 1 and 0 < whole["recall"] < 1


def test_prdc_rejects_too_few_samples_and_mismatched_widths():
    with pytest.raises(ValueError, match="at least 6 samples"):
        prdc(torch.zeros(5, 2), torch.zeros(10, 2), nearest_k=5)
    with pytest.raises(ValueError, match="width"):
        prdc(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="nearest_k"):
        prdc(torch.zeros(10, 2), torch.zeros(10, 2), nearest_k=0)


class FirstPixels(nn.Module):
    """The first two pixels of each image as float32 features, remembering batch sizes and the mode."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append((len(x), torch.is_inference_mode_enabled()))
        return x.flatten(1)[:, :2]


def test_features_of_runs_in_batches_under_inference_mode_and_returns_cpu_float64():
    images = torch.rand(7, 1, 28, 28) * 2 - 1
    module = FirstPixels()

    features = features_of(module, images, batch_size=3)

    assert module.batches == [(3, True), (3, True), (1, True)]
    assert features.dtype == torch.float64 and features.device.type == "cpu"
    assert torch.equal(features, images.flatten(1)[:, :2].double())


def _prdc_by_direct_differences(real, fake, k):
    """The definitions, on exact (direct-difference) distances, all pairs at once: the reference."""
    d_rr = torch.cdist(real, real, compute_mode="donot_use_mm_for_euclid_dist").fill_diagonal_(torch.inf)
    d_ff = torch.cdist(fake, fake, compute_mode="donot_use_mm_for_euclid_dist").fill_diagonal_(torch.inf)
    d_rf = torch.cdist(real, fake, compute_mode="donot_use_mm_for_euclid_dist")
    r_real, r_fake = d_rr.kthvalue(k, dim=1).values, d_ff.kthvalue(k, dim=1).values
    inside = d_rf < r_real[:, None]  # (real, fake): fake j in real i's ball
    return {
        "precision": inside.any(0).double().mean().item(),
        "recall": (d_rf < r_fake[None, :]).any(1).double().mean().item(),
        "density": inside.sum(0).double().mean().item() / k,
        "coverage": inside.any(1).double().mean().item(),
    }


@pytest.mark.parametrize("seed", range(4))
def test_the_matmul_distances_give_the_exact_results_also_on_ties_and_duplicates(seed):
    """Features on a grid, (i + 1/3) / 10 for i in {0, 1, 2} (many equal distances, radii equal to other
    points' distances), a third of the fakes duplicates of reals: the fast path's counts are those of
    torch.cdist's exact mode, where the bare matmul's last bits (a duplicate ~1e-8 away instead of 0)
    flip strict "< radius" tests (it gets all four seeds wrong)."""
    g = torch.Generator().manual_seed(seed)
    real = (torch.randint(0, 3, (300, 8), generator=g).double() + 1 / 3) / 10
    fake = torch.cat([real[:100], (torch.randint(0, 3, (200, 8), generator=g).double() + 1 / 3) / 10])
    assert prdc(real, fake, nearest_k=5) == _prdc_by_direct_differences(real, fake, 5)
