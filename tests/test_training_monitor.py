"""The in-training checks: when they measure, what they log and keep, when the alarms go off; they leave
training alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from configs import experiment_config, monitor_config
from torch import nn

from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.models import GAN_MODELS, build_gan
from gan_pipeline.sampling import generate
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.monitor import ModeCollapse, TrainingMonitor


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
    cfg = monitor_config(
        eval_every=eval_every, n_samples=50, min_coverage=10, on_collapse=on_collapse, score="kl_from_uniform"
    )
    classifier = ScriptedClassifier(n_digits)
    monitor = TrainingMonitor(cfg, classifier, GAN_MODELS["mlp_gan"], 8, 0.9, 0.01, log, rows, **kwargs)
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
    assert set(logged[0][1]) == {
        "monitor_coverage",
        "monitor_kl_from_uniform",
        "monitor_alarm",
        "monitor_best",
        "monitor_worse_checks",
        "monitor_diverged",
    }  # no monitor_fid_classifier: this monitor has no real digits to compare with
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


class ScoredClassifier(ScriptedClassifier):
    """ScriptedClassifier with 4 features: the same seeded N(0, 1) draw for every batch of a size, shifted
    by `shift` for samples (the real digits are scored at shift 0, when the monitor is built). Both sides'
    covariances are then equal, and fid_classifier is exactly the squared mean shift, 4 * shift**2."""

    feature_dim = 4

    def __init__(self):
        super().__init__()
        self.shift = 0.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        base = torch.randn(len(images), 4, generator=torch.Generator().manual_seed(0))
        return base + self.shift


def _scored_monitor(log=None, fid_inception=None, **cfg):
    settings = dict(eval_every=1, n_samples=50, min_coverage=10, score="fid_classifier", keep_best=True)
    settings.update(diverge_margin=0.5, diverge_checks=2, on_diverge="warn")
    settings.update(cfg)
    classifier = ScoredClassifier()
    real = torch.zeros(settings["n_samples"], 1, 28, 28)
    monitor = TrainingMonitor(monitor_config(**settings), classifier, GAN_MODELS["mlp_gan"], 8, 0.9, 0.01,
                              log, real=real, fid_inception=fid_inception)  # fmt: skip
    return monitor, classifier


def test_keeps_the_best_check_and_its_weights_and_warns_when_the_score_stays_worse_by_the_margin(capsys):
    """Scores 36, 4 (best), 16 (worse than 4 x 1.5), 4.84 (not), 16, 16: two worse checks in a row at the
    last one, the divergence alarm's diverge_checks."""
    monitor, classifier = _scored_monitor()
    generator, _ = build_gan("mlp_gan", 8)
    weights = {}
    for epoch, shift in enumerate([3.0, 1.0, 2.0, 1.1, 2.0, 2.0], start=1):
        classifier.shift = shift
        with torch.no_grad():
            for p in generator.parameters():
                p.fill_(epoch / 100)
        weights[epoch] = {k: v.clone() for k, v in generator.state_dict().items()}
        monitor(epoch, epoch * 10, generator)
    rows = monitor.rows
    assert [r["fid_classifier"] for r in rows] == pytest.approx([36, 4, 16, 4.84, 16, 16], abs=1e-6)
    assert [r["best"] for r in rows] == [1, 1, 0, 0, 0, 0]
    assert [r["worse_checks"] for r in rows] == [0, 0, 1, 0, 1, 2]
    assert [r["diverged"] for r in rows] == [0, 0, 0, 0, 0, 1]
    assert monitor.best["step"] == 20
    for name, value in weights[2].items():
        assert torch.equal(monitor.best_state[name], value), name
    assert monitor.checkpoint_tensors() == {"best": monitor.best_state}
    assert capsys.readouterr().err.splitlines() == [
        "warning: training is diverging at epoch 6 (step 60): fid_classifier 16 is more than "
        "monitor.diverge_margin 0.5 worse than the best, 4 at step 20, for monitor.diverge_checks 2 checks "
        "in a row; the best generator is kept"
    ]


def test_the_score_alone_ranks_the_checks_whatever_their_coverage():
    """Coverage is the collapse alarm's: a check whose few hundred samples read one digit fewer but whose
    FID is lower is the better one."""
    monitor, classifier = _scored_monitor()
    generator, _ = build_gan("mlp_gan", 8)
    classifier.shift = 2.0  # fid 16, all 10 digits
    monitor(1, 10, generator)
    classifier.shift, classifier.diverse = 1.0, False  # fid 4, every sample a 0: coverage 1
    monitor(2, 20, generator)
    classifier.shift, classifier.diverse = 1.5, True  # fid 9, all 10 digits
    monitor(3, 30, generator)
    assert [r["coverage"] for r in monitor.rows] == [10, 1, 10]
    assert [r["best"] for r in monitor.rows] == [1, 1, 0] and monitor.best["step"] == 20


def test_without_keep_best_the_checks_are_scored_but_no_weights_are_kept():
    monitor, classifier = _scored_monitor(keep_best=False)
    generator, _ = build_gan("mlp_gan", 8)
    monitor(1, 10, generator)
    assert monitor.rows[0]["best"] == 1 and monitor.best_state is None and monitor.checkpoint_tensors() == {}


class ScriptedInception:
    """fid_inception(images) that returns the next of `values` and keeps the images it was given."""

    def __init__(self, values):
        self.values, self.seen = list(values), []

    def __call__(self, images: np.ndarray) -> float:
        self.seen.append(images.copy())
        return self.values[len(self.seen) - 1]


def test_with_score_fid_inception_the_inception_fid_of_the_checks_uint8_samples_ranks_them(capsys):
    """Inception FID 30, 10 (best), 20, 20 (worse than 10 x 1.5 twice: the alarm): the checks' own
    samples, as uint8 from the same latents, are what it scores, and fid_classifier no longer ranks."""
    inception, logged = ScriptedInception([30.0, 10.0, 20.0, 20.0]), []
    monitor, classifier = _scored_monitor(
        score="fid_inception", n_samples=20, log=lambda step, m: logged.append(m), fid_inception=inception
    )
    generator, _ = build_gan("mlp_gan", 8)
    for epoch, shift in enumerate([1.0, 3.0, 1.0, 1.0], start=1):
        classifier.shift = shift  # fid_classifier 4, 36, 4, 4: it would rank otherwise
        with torch.no_grad():
            for p in generator.parameters():
                p.fill_(epoch / 100)
        monitor(epoch, epoch * 10, generator)
        expected, _ = generate(generator, GAN_MODELS["mlp_gan"], 8, 20, monitor.cfg.seed)
        assert inception.seen[-1].dtype == np.uint8 and np.array_equal(inception.seen[-1], expected)
    rows = monitor.rows
    assert [r["fid_inception"] for r in rows] == [30.0, 10.0, 20.0, 20.0]
    assert [r["fid_classifier"] for r in rows] == pytest.approx([4, 36, 4, 4], abs=1e-6)
    assert [r["best"] for r in rows] == [1, 1, 0, 0] and monitor.best["step"] == 20
    assert [r["diverged"] for r in rows] == [0, 0, 0, 1]
    assert logged[1]["monitor_fid_inception"] == 10.0
    assert monitor.columns[4:6] == ["fid_classifier", "fid_inception"]
    assert "warning: training is diverging at epoch 4 (step 40): fid_inception 20 is more than " in (
        capsys.readouterr().err
    )


def test_fid_inception_is_computed_only_when_it_is_the_score_and_needed_then():
    inception = ScriptedInception([1.0])
    monitor, _ = _scored_monitor(fid_inception=inception)
    monitor(1, 10, build_gan("mlp_gan", 8)[0])
    assert inception.seen == [] and "fid_inception" not in monitor.rows[0]
    assert "fid_inception" not in monitor.columns  # the eval log's columns stay those of its score
    with pytest.raises(ValueError, match="monitor.score fid_inception needs the Inception FID"):
        _scored_monitor(score="fid_inception")


def _tiny_exp(epochs, name="mlp_gan", **train):
    return experiment_config(name, latent_dim=8, epochs=epochs, lr=2e-4, precision="auto",
                             batch_size=16, checkpoint_every=4, **train)  # fmt: skip


def test_on_diverge_stop_ends_training_there_as_a_finished_run_that_a_rerun_does_not_train_further(tmp_path):
    """The alarm goes off at epoch 3's check (scores 4, 16, 16): training ends after 3 of 6 epochs, the
    last checkpoint is marked stopped and counts as finished, and a run resumed from it trains no step."""
    from gan_pipeline.config import flatten
    from gan_pipeline.training.checkpoint import load_checkpoint
    from gan_pipeline.training.loop import Checkpointing

    images = to_float(torch.zeros(64, 28, 28, dtype=torch.uint8), (-1.0, 1.0))
    batches = TensorBatches(images, torch.zeros(64), 16)  # 4 steps an epoch
    monitor, classifier = _scored_monitor(on_diverge="stop")

    def scripted(epoch, step, generator):
        classifier.shift = 1.0 if epoch == 1 else 2.0
        monitor(epoch, step, generator)

    path = tmp_path / "ckpt.safetensors"
    exp = _tiny_exp(6)
    result = train_gan(exp, batches, on_epoch=scripted, checkpointing=Checkpointing(path, flatten(exp)))
    assert result.stopped and result.steps == 12
    checkpoint = load_checkpoint(path)
    assert checkpoint.state.stopped and checkpoint.state.step == 12 and checkpoint.finished
    again = train_gan(exp, batches, on_epoch=scripted,
                      checkpointing=Checkpointing(path, flatten(exp), checkpoint))  # fmt: skip
    assert again.steps == 12 and again.resumed_from == 12 and again.stopped


@pytest.mark.parametrize(
    "model, train",
    # dcgan28's EMA: its BatchNorm statistics are measured anew at each check
    [("mlp_gan", {}), ("dcgan28", {"ema_decay": 0.8})],
    ids=["mlp_gan", "dcgan28_ema"],
)
def test_a_resumed_run_keeps_the_same_best_weights_and_rows_as_one_that_never_stopped(tmp_path, model, train):
    """With a real (untrained) digit classifier and real fid_classifier: a run checkpointed after 2 epochs
    (at an epoch's end, before its check) and resumed to 4 ends with the rows and the kept weights of an
    uninterrupted 4-epoch run."""
    from gan_pipeline.config import flatten
    from gan_pipeline.models.classifier import DigitClassifier
    from gan_pipeline.training.checkpoint import load_checkpoint
    from gan_pipeline.training.loop import Checkpointing

    g = torch.Generator().manual_seed(0)
    images = to_float(torch.randint(0, 256, (64, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    batches = TensorBatches(images, torch.zeros(64), 16)
    cfg = monitor_config(eval_every=1, n_samples=20, score="fid_classifier", keep_best=True)

    def monitor(rows=None, best_state=None):
        torch.manual_seed(0)
        classifier = DigitClassifier(8)
        spec = GAN_MODELS[model]
        return TrainingMonitor(cfg, classifier, spec, 8, 0.9, 0.01, rows=rows, real=images[:20],
                               best_state=best_state)  # fmt: skip

    straight = monitor()
    train_gan(_tiny_exp(4, model, **train), batches, on_epoch=straight)
    path = tmp_path / "ckpt.safetensors"
    first = monitor()
    identity = flatten(_tiny_exp(4, model, **train))
    checkpointing = Checkpointing(path, identity, extra={"monitor_rows": first.rows})
    checkpointing.tensors = first.checkpoint_tensors
    train_gan(_tiny_exp(2, model, **train), batches, on_epoch=first, checkpointing=checkpointing)
    resume = load_checkpoint(path)
    second = monitor(resume.extra["monitor_rows"], resume.saved("best") or None)
    checkpointing = Checkpointing(path, identity, resume, extra={"monitor_rows": second.rows})
    checkpointing.tensors = second.checkpoint_tensors
    train_gan(_tiny_exp(4, model, **train), batches, on_epoch=second, checkpointing=checkpointing)
    assert second.rows == straight.rows and len(second.rows) == 4
    assert all(r["fid_classifier"] > 0 for r in second.rows)
    assert second.best_state.keys() == straight.best_state.keys()
    for name, value in straight.best_state.items():
        assert torch.equal(second.best_state[name], value), name
