"""The mode-collapse alarm: when it measures, what it logs, when it goes off; it leaves training alone."""

from __future__ import annotations

import pytest
import torch
from configs import experiment_config, monitor_config
from torch import nn

from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.monitor import CollapseMonitor, ModeCollapse


class ScriptedClassifier(nn.Module):
    """Confident logits: sample i is digit i % n_digits while `diverse`, else every sample is a 0 (a
    collapse)."""

    def __init__(self, n_digits: int = 10):
        super().__init__()
        self.diverse, self.n_digits = True, n_digits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = len(images)
        digits = torch.arange(n) % self.n_digits if self.diverse else torch.zeros(n, dtype=torch.long)
        return nn.functional.one_hot(digits, 10).float() * 20


def _monitor(on_collapse="warn", log=None, eval_every=2, rows=None, n_digits=10, **kwargs):
    cfg = monitor_config(eval_every=eval_every, n_samples=50, min_coverage=10, on_collapse=on_collapse)
    classifier = ScriptedClassifier(n_digits)
    monitor = CollapseMonitor(cfg, classifier, GAN_MODELS["mlp_gan"], 8, 0.9, 0.01, log, rows, **kwargs)
    return monitor, classifier


def test_measures_every_eval_every_epochs_and_logs_coverage_and_kl():
    logged = []
    monitor, _ = _monitor(log=lambda step, m: logged.append((step, m)))
    generator, _ = build_gan("mlp_gan", 8)
    generator.train()
    for epoch in range(1, 6):
        monitor(epoch, epoch * 10, generator)
    assert [(r["epoch"], r["step"]) for r in monitor.rows] == [(2, 20), (4, 40)]
    assert [r["coverage"] for r in monitor.rows] == [10, 10]
    assert all(r["kl_from_uniform"] == pytest.approx(0, abs=0.01) for r in monitor.rows)
    assert [s for s, _ in logged] == [20, 40]
    assert set(logged[0][1]) == {"monitor_coverage", "monitor_kl_from_uniform", "monitor_alarm"}
    assert generator.training  # put back in train mode


def test_warns_when_coverage_falls_after_reaching_the_threshold(capsys):
    monitor, classifier = _monitor()
    generator, _ = build_gan("mlp_gan", 8)
    classifier.diverse = False
    monitor(2, 20, generator)  # never reached yet: the slow start of training, no alarm
    classifier.diverse = True
    monitor(4, 40, generator)
    classifier.diverse = False
    monitor(6, 60, generator)
    assert [r["alarm"] for r in monitor.rows] == [0, 0, 1]
    assert [r["coverage"] for r in monitor.rows] == [1, 10, 1]
    err = capsys.readouterr().err
    assert "warning: mode collapse at epoch 6 (step 60): 1 of the 10 digits in the data covered by 50 " in err
    assert "below monitor.min_coverage 10 (KL" in err and err.count("mode collapse") == 1


@pytest.mark.parametrize("digits", [None, range(9)])
def test_with_a_digit_missing_from_the_data_the_threshold_follows_the_digits_present(capsys, digits):
    """Data without 9s: the classifier never predicts a 9, so coverage tops out at 9 and min_coverage 10 is
    never reached; told the digits present, the alarm's threshold is 9 and a collapse is caught."""
    monitor, classifier = _monitor(n_digits=9, **({} if digits is None else {"digits": digits}))
    generator, _ = build_gan("mlp_gan", 8)
    monitor(2, 20, generator)
    classifier.diverse = False
    monitor(4, 40, generator)
    err = capsys.readouterr().err
    assert [r["coverage"] for r in monitor.rows] == [9, 1]
    if digits is None:
        assert [r["alarm"] for r in monitor.rows] == [0, 0] and err == ""
        return
    assert [r["alarm"] for r in monitor.rows] == [0, 1]
    assert err.splitlines() == [
        "warning: monitor.min_coverage 10 is more than the 9 digits in the training data (it has no 9): the "
        "alarm goes off when coverage falls below 9",
        "warning: mode collapse at epoch 4 (step 40): 1 of the 9 digits in the data covered by 50 samples, "
        "below 9 (monitor.min_coverage 10 capped at the digits present) (KL from uniform 2.303)",
    ]


def test_stops_training_when_on_collapse_is_stop():
    monitor, classifier = _monitor("stop", eval_every=1)
    exp = experiment_config("mlp_gan", latent_dim=8, epochs=5, lr=2e-4, precision="auto", batch_size=16)
    images = to_float(torch.zeros(64, 28, 28, dtype=torch.uint8), (-1.0, 1.0))

    def collapse_after_first(epoch, step, generator):
        monitor(epoch, step, generator)
        classifier.diverse = False

    with pytest.raises(ModeCollapse, match="mode collapse at epoch 2 \\(step 8\\)"):
        train_gan(exp, TensorBatches(images, torch.zeros(64), 16), on_epoch=collapse_after_first)


def test_training_with_the_monitor_ends_with_the_same_weights():
    exp = experiment_config(
        "dcgan28", latent_dim=8, epochs=2, lr=2e-4, precision="auto", batch_size=16, seed=1
    )
    g = torch.Generator().manual_seed(0)
    images = to_float(torch.randint(0, 256, (48, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    plain = train_gan(exp, TensorBatches(images, torch.zeros(48), 16))
    monitor, _ = _monitor(eval_every=1)
    monitor.spec, monitor.latent_dim = GAN_MODELS["dcgan28"], 8
    watched = train_gan(exp, TensorBatches(images, torch.zeros(48), 16), on_epoch=monitor)
    assert len(monitor.rows) == 2
    for (name, a), b in zip(
        plain.generator.state_dict().items(), watched.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_resumed_run_keeps_the_checks_so_far_and_the_alarm_remembers_reaching_the_threshold(tmp_path):
    """Checkpoints carry the monitor's rows (the train stage puts them in Checkpointing.extra); a run
    resumed from one, even at an epoch's end before that epoch's check ran, ends with the same rows as
    one that never stopped."""
    from gan_pipeline.config import flatten
    from gan_pipeline.training.checkpoint import load_checkpoint
    from gan_pipeline.training.loop import Checkpointing

    def exp(epochs):
        return experiment_config(
            "mlp_gan",
            latent_dim=8,
            epochs=epochs,
            lr=2e-4,
            precision="auto",
            batch_size=16,
            checkpoint_every=4,
        )

    images = to_float(torch.zeros(64, 28, 28, dtype=torch.uint8), (-1.0, 1.0))
    batches = TensorBatches(images, torch.zeros(64), 16)  # 4 steps an epoch: every checkpoint at an end
    straight, _ = _monitor(eval_every=1)
    train_gan(exp(3), batches, on_epoch=straight)

    path = tmp_path / "ckpt.safetensors"
    first, _ = _monitor(eval_every=1)
    checkpointing = Checkpointing(path, flatten(exp(3)), extra={"monitor_rows": first.rows})
    train_gan(exp(2), batches, on_epoch=first, checkpointing=checkpointing)
    resume = load_checkpoint(path)
    assert [r["epoch"] for r in resume.extra["monitor_rows"]] == [1]  # saved before epoch 2's check
    second, _ = _monitor(eval_every=1, rows=resume.extra["monitor_rows"])
    assert second.reached
    train_gan(exp(3), batches, on_epoch=second, checkpointing=Checkpointing(path, flatten(exp(3)), resume))
    assert second.rows == straight.rows
