"""Per-backend metric sets and the Fréchet distance's numerical truth against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from configs import evaluate_config

from gan_pipeline.errors import ParamsError
from gan_pipeline.metrics.fid import fid_from_features, frechet_distance
from gan_pipeline.metrics.kid import kid_unbiased_mmd2
from gan_pipeline.metrics.suite import feature_metrics, real_floor, seeded_pick, split_sample_sizes


def _reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    cov = lambda x: np.cov(x, rowvar=False)  # noqa: E731
    return frechet_distance(real.mean(0), cov(real), fake.mean(0), cov(fake))


@pytest.mark.parametrize(
    ("n_real", "n_fake", "dim"),
    [(500, 400, 16), (300, 300, 64), (40, 30, 64), (12, 10, 128)],  # the last two: rank-deficient covariances
)
def test_frechet_distance_agrees_with_scipy_sqrtm_to_1e_6(n_real, n_fake, dim):
    rng = np.random.default_rng(dim + n_real)
    mixing = rng.normal(size=(dim, dim))
    real = rng.normal(size=(n_real, dim)) @ mixing
    fake = rng.normal(size=(n_fake, dim)) @ (mixing * 1.2) + 0.3
    expected = _reference_fid(real, fake)
    assert expected > 1
    ours = fid_from_features(torch.from_numpy(real), torch.from_numpy(fake))
    assert ours == pytest.approx(expected, rel=1e-6)


def test_fid_of_a_set_against_itself_is_zero_also_when_rank_deficient():
    for n, dim in ((1000, 32), (20, 256)):
        features = torch.from_numpy(np.random.default_rng(n).normal(size=(n, dim)))
        assert abs(fid_from_features(features, features)) < 1e-6 * dim


def test_feature_metrics_names_say_the_backend_and_record_the_sample_sizes():
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.normal(size=(60, 8)))
    fake = torch.from_numpy(rng.normal(size=(40, 8)) + 0.5)
    cfg = evaluate_config(kid_subset_size=1000, kid_subsets=3, prdc_nearest_k=3)
    metrics = feature_metrics("inception", real, fake, cfg)
    assert set(metrics) == {
        "fid_inception", "fid_inception_n_real", "fid_inception_n_fake", "kid_inception", "kid_inception_std",
        "kid_inception_subset_size", "prdc_inception_precision", "prdc_inception_recall",
        "prdc_inception_density", "prdc_inception_coverage",
    }  # fmt: skip
    assert (metrics["fid_inception_n_real"], metrics["fid_inception_n_fake"]) == (60, 40)
    assert metrics["fid_inception"] == pytest.approx(_reference_fid(real.numpy(), fake.numpy()), rel=1e-6)
    # One subset size of 40 per side, drawn 3 times: the mean lies around the full-set estimate.
    assert metrics["kid_inception_subset_size"] == 40
    full_set = kid_unbiased_mmd2(real, fake)
    assert abs(metrics["kid_inception"] - full_set) < 3 * metrics["kid_inception_std"] + 0.05
    with pytest.raises(ValueError, match="unknown feature backend"):
        feature_metrics("vgg", real, fake, cfg)


def test_split_sample_sizes_keeps_the_scores_and_sets_the_sizes_apart():
    metrics = {
        "fid_inception": 12.5, "fid_inception_n_real": 60, "fid_inception_n_fake": 40, "kid_inception": 0.1,
        "kid_inception_subset_size": 40, "channel_n_fake": 7, "coverage": 9, "label_accuracy": 0.5,
        "n_train": 4000, "fid_real_floor_n_test": 1000, "test_accuracy": 0.9,
    }  # fmt: skip
    scores, sizes = split_sample_sizes(metrics)
    assert scores == {
        "fid_inception": 12.5, "kid_inception": 0.1, "coverage": 9, "label_accuracy": 0.5,
        "test_accuracy": 0.9,
    }  # fmt: skip
    assert sizes == {
        "fid_inception_n_real": 60, "fid_inception_n_fake": 40, "kid_inception_subset_size": 40,
        "channel_n_fake": 7, "n_train": 4000, "fid_real_floor_n_test": 1000,
    }  # fmt: skip


def test_seeded_pick_is_sorted_distinct_and_the_same_every_run():
    a, b = seeded_pick(100, 10, 7), seeded_pick(100, 10, 7)
    assert torch.equal(a, b) and len(set(a.tolist())) == 10 and torch.equal(a, a.sort().values)
    assert not torch.equal(a, seeded_pick(100, 10, 8))
    assert torch.equal(seeded_pick(5, 10, 0), torch.arange(5))


def test_seeded_pick_unsorted_keeps_the_order_drawn():
    drawn = torch.randperm(100, generator=torch.Generator().manual_seed(7))[:10]
    assert torch.equal(seeded_pick(100, 10, 7, sort=False), drawn)
    assert torch.equal(seeded_pick(100, 10, 7, sort=False).sort().values, seeded_pick(100, 10, 7))


def test_real_floor_scores_test_against_the_seeded_pick_of_train_as_tensor_or_array():
    train = torch.arange(50.0)[:, None] * torch.ones(1, 3)
    test = torch.zeros(4, 3)
    seen = []

    def score(t, picked):
        seen.append((t, picked))
        return "score"

    assert real_floor(score, test, train, 8, 3) == ("score", 8)
    assert seen[0][0] is test and torch.equal(seen[0][1], train[seeded_pick(50, 8, 3)])
    assert real_floor(score, test, train, 8, 3, sort=False)[1] == 8
    assert torch.equal(seen[1][1], train[seeded_pick(50, 8, 3, sort=False)])
    assert real_floor(score, test, train.numpy(), 80, 3)[1] == 50  # at most all of train
    assert isinstance(seen[2][1], np.ndarray) and np.array_equal(
        seen[2][1], train.numpy()[seeded_pick(50, 80, 3)]
    )


def test_real_floor_is_the_fid_of_test_vs_the_picked_train_features():
    rng = np.random.default_rng(1)
    train, test = (
        torch.from_numpy(rng.normal(size=(200, 6))),
        torch.from_numpy(rng.normal(size=(60, 6)) + 0.2),
    )
    floor, n = real_floor(fid_from_features, test, train, 100, 0)
    picked = train[seeded_pick(200, 100, 0)]
    assert n == 100 and floor == fid_from_features(test, picked)
    assert floor == pytest.approx(_reference_fid(test.numpy(), picked.numpy()), rel=1e-6)


@pytest.mark.parametrize(("n_real", "n_fake", "side"), [(3, 10, "3 real"), (10, 3, "3 generated")])
def test_fewer_images_than_prdc_nearest_k_needs_name_the_param(n_real, n_fake, side):
    cfg = evaluate_config(prdc_nearest_k=3)
    real, fake = torch.randn(n_real, 4, dtype=torch.float64), torch.randn(n_fake, 4, dtype=torch.float64)
    with pytest.raises(ParamsError) as err:
        feature_metrics("classifier", real, fake, cfg)
    assert str(err.value) == (
        f"evaluate.prdc_nearest_k: expected fewer than the {side} images scored in classifier features (each "
        "k-NN ball needs k other images), got 3"
    )
    four = torch.randn(4, 4, dtype=torch.float64)  # k + 1 per side: each ball has its k neighbours
    assert "prdc_classifier_precision" in feature_metrics("classifier", four, four + 1, cfg)
