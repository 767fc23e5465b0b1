import math

import numpy as np
import pytest
import torch
from configs import classifier_config, data_config
from torch import nn

from gan_pipeline.data import prepare
from gan_pipeline.data.loading import load_split, train_digits
from gan_pipeline.errors import DataError
from gan_pipeline.models.classifier import DigitClassifier
from gan_pipeline.training.classifier import (
    accuracy,
    check_digits,
    fit_and_score,
    predict_proba,
    train_classifier,
)

TINY = classifier_config(epochs=2, batch_size=16, lr=1e-3, feature_dim=8, seed=3)


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    monkeypatch.setenv("GAN_PIPELINE_PROGRESS", "0")
    monkeypatch.setenv("GAN_PIPELINE_DEVICE", "cpu")


def patterns(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Easy 'digits': class k is a bright 6x6 square at its own place on a noisy dark background."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = -1 + 0.3 * torch.rand(len(labels), 1, 28, 28, generator=generator)
    for i, k in enumerate(labels.tolist()):
        row, col = 2 + 9 * (k // 4), 2 + 6 * (k % 4)
        images[i, 0, row : row + 6, col : col + 6] = 1.0
    return images, labels


def test_training_raises_accuracy_on_separable_patterns():
    train_x, train_y = patterns(20, seed=0)
    test_x, test_y = patterns(10, seed=1)
    torch.manual_seed(0)
    untrained = accuracy(DigitClassifier(feature_dim=16), test_x, test_y)

    model, _ = train_classifier(train_x, train_y, classifier_config(epochs=3, batch_size=20, feature_dim=16))

    assert untrained <= 0.3
    assert accuracy(model, test_x, test_y) >= 0.9


def test_training_is_deterministic_for_the_same_seed_and_data():
    x, y = patterns(6, seed=0)

    first, history_1 = train_classifier(x, y, TINY)
    second, history_2 = train_classifier(x, y, TINY)
    other_seed, _ = train_classifier(x, y, classifier_config(epochs=2, batch_size=16, feature_dim=8, seed=4))

    state_1, state_2 = first.state_dict(), second.state_dict()
    assert state_1.keys() == state_2.keys()
    assert all(torch.equal(state_1[k], state_2[k]) for k in state_1)
    assert history_1 == history_2
    assert not torch.equal(state_1["head.1.weight"], other_seed.state_dict()["head.1.weight"])


def test_training_returns_an_eval_model_and_one_history_row_per_epoch():
    x, y = patterns(6, seed=0)

    model, history = train_classifier(x, y, TINY)

    assert not model.training
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(set(row) == {"epoch", "loss", "train_accuracy"} for row in history)
    assert all(row["loss"] > 0 and math.isfinite(row["loss"]) for row in history)
    assert all(0 <= row["train_accuracy"] <= 1 for row in history)


def test_training_rejects_labels_that_do_not_match_the_images():
    x, y = patterns(2, seed=0)
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        train_classifier(x, y[:-1], TINY)


def test_progress_bar_shows_only_when_enabled(monkeypatch, capsys):
    x, y = patterns(2, seed=0)
    cfg = classifier_config(epochs=1, batch_size=10, feature_dim=8)

    train_classifier(x, y, cfg)
    assert "classifier" not in capsys.readouterr().err

    monkeypatch.setenv("GAN_PIPELINE_PROGRESS", "1")
    train_classifier(x, y, cfg)
    assert "classifier" in capsys.readouterr().err


class FirstTenPixels(nn.Module):
    """A stand-in classifier whose logits are the first ten pixels."""

    def forward(self, x):
        return x.flatten(1)[:, :10]


def test_accuracy_is_the_share_of_correct_predictions():
    images = torch.zeros(4, 1, 28, 28)
    for i, predicted in enumerate([3, 7, 0, 9]):
        images[i, 0, 0, predicted] = 1.0
    labels = torch.tensor([3, 7, 1, 9])

    assert accuracy(FirstTenPixels(), images, labels, batch_size=3) == pytest.approx(0.75)


def test_predict_proba_gives_softmax_rows_independent_of_batch_size():
    torch.manual_seed(0)
    model = DigitClassifier(feature_dim=8)
    x = torch.rand(7, 1, 28, 28) * 2 - 1

    probs = predict_proba(model, x, batch_size=3)

    assert probs.shape == (7, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(7))
    torch.testing.assert_close(probs, predict_proba(model, x))
    torch.testing.assert_close(probs, torch.softmax(model(x), 1).detach())


def _prepared(tmp_path, real_digits, write_csv, keep):
    rows = np.isin(real_digits.labels, keep)
    csv = write_csv(tmp_path / "digits.csv", real_digits.images[rows], real_digits.labels[rows])
    path = tmp_path / "digits.h5"
    prepare(data_config(source="csv", path=str(csv), test_fraction=0.25), path, tmp_path / "stats.json")
    return path


def test_a_dataset_of_one_digit_is_refused_before_training(tmp_path, real_digits, write_csv):
    """On one class the classifier scores accuracy 1.0 whatever it learns."""
    path = _prepared(tmp_path, real_digits, write_csv, [3])
    with pytest.raises(DataError) as caught:
        fit_and_score(path, TINY, n_floor=2)
    assert str(caught.value) == (
        f"{path}: the train split holds 1 digit (3) in 3 images: the digit classifier needs at least 2 "
        "(on one it scores accuracy 1.0 whatever it learns)"
    )


def test_digits_missing_from_a_split_are_named_in_a_warning(tmp_path, real_digits, write_csv, capsys):
    path = _prepared(tmp_path, real_digits, write_csv, [0, 1, 2, 3, 4, 5, 6, 8])
    check_digits(path, *(load_split(path, split)[1] for split in ("train", "test")))
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {path}: the {split} split has no images of digit 7, 9 (the classifier {what} them; the "
        "collapse alarm counts the digits of the train split)"
        for split, what in (("train", "never learns"), ("test", "is not tested on"))
    ]
    assert train_digits(path) == [0, 1, 2, 3, 4, 5, 6, 8]
    check_digits(path, np.arange(10), np.arange(10))
    assert capsys.readouterr().err == ""
