"""Checkpoints: a run killed with SIGKILL and resumed ends bit-identical to one that never stopped; a
checkpoint from other params, a foreign file or a pickle is refused; a diverging run stops by name."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from configs import experiment_config
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from gan_pipeline.config import ExperimentConfig, flatten
from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.errors import DataError, ParamsError
from gan_pipeline.io import save_weights
from gan_pipeline.models import build_gan
from gan_pipeline.training import resume
from gan_pipeline.training.checkpoint import CheckpointedObjects, TrainState, load_checkpoint, save_checkpoint
from gan_pipeline.training.loop import Checkpointing, TrainingDiverged, train_gan
from gan_pipeline.training.resume import resume_point, training_code

REPO = Path(__file__).resolve().parents[1]


# Every random draw the loop makes: the epoch permutation, z, noisy labels; BatchNorm buffers, the EMA and
# G updated every 2nd step. 7 epochs of 6 batches, a checkpoint every 5 steps (mostly mid-epoch).
DRIVER = r"""
import json, sys, time
import torch
from safetensors.torch import save_file
from configs import experiment_config
from gan_pipeline.config import flatten
from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.training.resume import resume_point
from gan_pipeline.training.loop import Checkpointing, train_gan

checkpoint, out, step_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
torch.set_num_threads(1)
exp = experiment_config("dcgan28", latent_dim=8, epochs=7, lr=2e-4, precision="auto", batch_size=16,
                        log_every=3, checkpoint_every=5, d_steps=2, label_noise=0.2, ema_decay=0.8, seed=5)
g = torch.Generator().manual_seed(1)
images = to_float(torch.randint(0, 256, (100, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
batches = TensorBatches(images, torch.arange(100) % 10, 16)
identity = flatten(exp)
resume, note = resume_point(checkpoint, identity, exp.train.epochs * len(batches))
print(note, flush=True)
result = train_gan(exp, batches, on_step=lambda step, row: time.sleep(step_s),
                   checkpointing=Checkpointing(checkpoint, identity, resume))
state = {f"{name}/{k}": v.contiguous() for name, m in (("g", result.generator), ("d", result.discriminator),
         ("ema", result.ema)) for k, v in m.state_dict().items()}
save_file(state, out, metadata={"history": json.dumps(result.history)})
"""


def _run_driver(tmp_path: Path, name: str, step_s: float = 0.0) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {
        **os.environ,
        "GAN_PIPELINE_PROGRESS": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
    }
    return subprocess.Popen(
        [
            sys.executable,
            str(driver),
            str(tmp_path / f"{name}.ckpt"),
            str(tmp_path / f"{name}.out"),
            str(step_s),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _checkpoint_step(path: Path) -> int:
    if not path.exists():
        return -1
    with safe_open(str(path), framework="pt") as f:
        import json

        return json.loads(f.metadata()["meta"])["state"]["step"]


def _final(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    with safe_open(str(path), framework="pt") as f:
        history = f.metadata()["history"]
    return load_file(str(path)), history


def test_a_run_killed_at_several_points_and_resumed_is_bit_identical(tmp_path):
    reference = _run_driver(tmp_path, "whole")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    notes = []
    # None: as soon as training starts, before the first checkpoint; 30: at an epoch boundary.
    for kill_after in (None, 10, 25, 30):
        proc = _run_driver(tmp_path, "killed", step_s=0.05)
        notes.append(proc.stdout.readline().strip())  # printed just before training starts
        deadline = time.monotonic() + 120
        while kill_after is not None and _checkpoint_step(tmp_path / "killed.ckpt") < kill_after:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the driver made no progress"
            time.sleep(0.01)
        if kill_after is not None:
            time.sleep(
                0.02 * kill_after % 0.07
            )  # land somewhere inside a later step, not just after the write
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _checkpoint_step(tmp_path / "killed.ckpt") >= (kill_after or -1)
    assert not (tmp_path / "killed.out").exists()
    assert _checkpoint_step(tmp_path / "killed.ckpt") < 42
    last = _run_driver(tmp_path, "killed")
    assert last.wait(timeout=300) == 0, last.stdout.read()
    notes.append(last.stdout.read().splitlines()[0])

    assert notes[0].startswith("no checkpoint") and notes[1].startswith("no checkpoint"), notes
    assert all(n.startswith("resuming from") for n in notes[2:]), notes
    whole, whole_history = _final(tmp_path / "whole.out")
    resumed, resumed_history = _final(tmp_path / "killed.out")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    assert resumed_history == whole_history


def _tiny(epochs=2, **changes) -> ExperimentConfig:
    model = {k: changes.pop(k) for k in ("name", "latent_dim") if k in changes}
    return experiment_config(
        model.get("name", "dcgan28"),
        latent_dim=model.get("latent_dim", 8),
        epochs=epochs,
        batch_size=16,
        log_every=2,
        checkpoint_every=4,
        **{"lr": 2e-4, "precision": "auto", **changes},
    )


def _batches(n=64, poison_batch: int | None = None):
    g = torch.Generator().manual_seed(1)
    images = to_float(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    if poison_batch is not None:  # every image NaN: whichever batch comes, the loss is NaN
        return _Poisoned(images, poison_batch)
    return TensorBatches(images, torch.arange(n) % 10, 16)


class _Poisoned(TensorBatches):
    """Batches whose `poison`-th (counting from 1 over the whole run) is NaN."""

    def __init__(self, images, poison):
        super().__init__(images, torch.arange(len(images)) % 10, 16)
        self.poison, self.served = poison, 0

    def epoch(self, rng):
        for real, labels in super().epoch(rng):
            self.served += 1
            yield (torch.full_like(real, float("nan")) if self.served == self.poison else real), labels


def _train(tmp_path, exp, resume=None):
    path = tmp_path / "ckpt.safetensors"
    identity = flatten(exp)
    if resume is None:
        resume, _ = resume_point(path, identity, exp.train.epochs * 4)
    return train_gan(exp, _batches(), checkpointing=Checkpointing(path, identity, resume))


def test_more_epochs_extend_a_finished_run_as_if_it_had_never_stopped(tmp_path):
    _train(tmp_path, _tiny(epochs=2))
    extended = _train(tmp_path, _tiny(epochs=3))
    assert extended.resumed_from == 8
    whole = train_gan(_tiny(epochs=3), _batches())
    for a, b in zip(
        whole.generator.state_dict().values(), extended.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "stabiliser",
    [
        {"spectral_norm": True},  # D's power-iteration vectors u, v are buffers in the checkpoint
        {"diffaugment": "color,translation,cutout"},  # its draws come from the checkpointed loop RNG
        {"ema_decay": 0.9, "ema_warmup_steps": 10},  # still warming up at the resume (step 8)
        {"lr": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.99)},
    ],
    ids=["spectral_norm", "diffaugment", "ema_warmup", "ttur"],
)
def test_a_run_with_a_stabiliser_resumes_bit_identical(tmp_path, stabiliser):
    _train(tmp_path, _tiny(epochs=2, **stabiliser))
    extended = _train(tmp_path, _tiny(epochs=3, **stabiliser))
    assert extended.resumed_from == 8
    whole = train_gan(_tiny(epochs=3, **stabiliser), _batches())
    for name in ("generator", "discriminator", "ema"):
        if getattr(whole, name) is None:
            continue
        a, b = getattr(whole, name).state_dict(), getattr(extended, name).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"
    assert extended.history == whole.history


def test_an_fp16_run_resumes_with_its_loss_scale_as_if_it_had_never_stopped(tmp_path):
    # The MLP (fp16 convolutions are slow on a CPU) with weights large enough that fp16 gradients overflow
    # at the initial loss scale: 4 steps, then 4 more.
    exp = lambda epochs: _tiny(epochs=epochs, name="mlp_gan", precision="fp16", init_std=0.1)  # noqa: E731
    _train(tmp_path, exp(1))
    saved = load_checkpoint(tmp_path / "ckpt.safetensors").meta["grad_scaler"]
    assert saved["scale"] < 2.0**16  # the scaler backed off from its initial scale: state worth keeping
    extended = _train(tmp_path, exp(2))
    assert extended.resumed_from == 4
    whole = train_gan(exp(2), _batches())
    for a, b in zip(
        whole.generator.state_dict().values(), extended.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_a_lazy_r1_run_resumes_on_the_same_penalty_schedule(tmp_path):
    # R1 every 3rd D step: due at steps 0, 3 and 6, so the resumed half (steps 4-7) takes it at 6 only if
    # the schedule counts the run's steps, not the process's.
    exp = lambda epochs: _tiny(epochs=epochs, name="mlp_gan", loss="hinge", r1_gamma=1.0, r1_every=3)  # noqa: E731
    _train(tmp_path, exp(1))
    extended = _train(tmp_path, exp(2))
    assert extended.resumed_from == 4
    whole = train_gan(exp(2), _batches())
    for module in ("generator", "discriminator"):
        for a, b in zip(
            getattr(whole, module).state_dict().values(),
            getattr(extended, module).state_dict().values(),
            strict=True,
        ):
            assert torch.equal(a, b), module
    assert extended.history == whole.history


def test_a_finished_run_made_by_other_training_code_is_retrained_an_unfinished_one_resumed(
    tmp_path, monkeypatch
):
    path = tmp_path / "ckpt.safetensors"
    _train(tmp_path, _tiny(epochs=1))  # finished: 4 of 4 steps
    assert resume_point(path, flatten(_tiny(epochs=1)), 4)[0] is not None  # same code: nothing to redo
    monkeypatch.setattr("gan_pipeline.training.resume.training_code", lambda: "edited")
    checkpoint, note = resume_point(path, flatten(_tiny(epochs=1)), 4)
    assert checkpoint is None
    assert note == f"{path}: a finished run made by other training code: training from scratch"
    monkeypatch.undo()
    with pytest.raises(TrainingDiverged):  # stops at step 6, leaving the checkpoint of step 4 unfinished
        train_gan(_tiny(), _batches(poison_batch=6), checkpointing=Checkpointing(path, flatten(_tiny())))
    monkeypatch.setattr("gan_pipeline.training.resume.training_code", lambda: "edited")
    checkpoint, note = resume_point(path, flatten(_tiny()), 8)
    assert checkpoint.state.step == 4
    assert note.endswith("at step 4 of 8 (the training code has changed since it was written)")


def test_the_training_code_is_the_import_closure_of_the_experiment_less_the_loss_plot():
    files = set(resume.training_files())
    trained_by = {"__init__.py", "training/experiment.py", "training/loop.py", "config/load.py",
                  "data/streaming.py", "models/dcgan.py", "training/monitor.py", "sampling.py"}  # fmt: skip
    assert {f"gan_pipeline/{name}" for name in trained_by} <= files
    assert not {f"gan_pipeline/{name}" for name in ("plots.py", "tracking.py", "evaluation.py")} & files


def test_the_training_code_fingerprint_follows_an_edit_of_a_module_it_imports_not_of_the_plot(
    tmp_path, monkeypatch
):
    """Computed afresh on a copy of the package: the same digest in another folder, another after a
    one-line edit of a module the training imports, the same after one of plots.py."""
    copy = tmp_path / "gan_pipeline"
    shutil.copytree(resume.SOURCE_ROOT / "gan_pipeline", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(resume, "SOURCE_ROOT", tmp_path)
    assert resume.training_code.__wrapped__() == training_code()
    with open(copy / "plots.py", "a") as f:
        f.write("# an edit\n")
    assert resume.training_code.__wrapped__() == training_code()
    with open(copy / "data" / "streaming.py", "a") as f:
        f.write("# an edit\n")
    assert resume.training_code.__wrapped__() != training_code()


def test_an_unfinished_run_with_other_params_is_refused_naming_the_param(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(TrainingDiverged):  # stops at step 6, leaving the checkpoint of step 4 unfinished
        train_gan(_tiny(), _batches(poison_batch=6), checkpointing=Checkpointing(path, flatten(_tiny())))
    assert _checkpoint_step(path) == 4
    with pytest.raises(ParamsError) as err:
        resume_point(path, flatten(_tiny(latent_dim=16)), 8)
    assert str(err.value).startswith(
        f"{path}: an unfinished run (step 4 of 8) was made with model.latent_dim 8, the params say 16"
    )
    with pytest.raises(ParamsError, match="made with train.lr 0.0002, the params say 0.001"):
        resume_point(path, flatten(_tiny(lr=0.001)), 8)
    checkpoint, note = resume_point(path, flatten(_tiny(epochs=5)), 20)  # epochs may change
    assert checkpoint.state.step == 4 and note.startswith("resuming")


def test_a_checkpoint_older_than_a_param_resumes_while_the_param_trains_as_before_it_existed(tmp_path):
    """A checkpoint whose identity lacks the keys added since (as one written before them): it goes on while
    each holds the value that trains as before (spectral_norm false, r1_gamma 0, ...; the checks' keys and
    r1_every any value), and is refused, naming the key, when one does not."""
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(TrainingDiverged):  # stops at step 6, leaving the checkpoint of step 4 unfinished
        train_gan(_tiny(), _batches(poison_batch=6), checkpointing=Checkpointing(path, flatten(_tiny())))
    checkpoint = load_checkpoint(path)
    added = ("spectral_norm", "lr_d", "ema_warmup_steps", "diffaugment", "r1_gamma", "r1_every", "keep_best")
    checkpoint.identity = {k: v for k, v in checkpoint.identity.items() if not k.endswith(added)}
    assert resume.differences(checkpoint, flatten(_tiny(r1_every=4, monitor={"keep_best": False}))) == []
    assert resume.differences(checkpoint, flatten(_tiny(r1_gamma=1.0))) == [("train.r1_gamma", None, 1.0)]
    assert resume.differences(checkpoint, flatten(_tiny(spectral_norm=True))) == [
        ("model.spectral_norm", None, True)
    ]


def test_a_finished_run_with_other_params_is_replaced_and_one_past_the_end_is_refused(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    _train(tmp_path, _tiny(epochs=2))
    checkpoint, note = resume_point(path, flatten(_tiny(latent_dim=16)), 8)
    assert checkpoint is None
    assert note == f"{path}: a finished run with model.latent_dim 8 (now 16): training from scratch"
    with pytest.raises(ParamsError, match="at step 8, past the 4 steps of train.epochs 1"):
        resume_point(path, flatten(_tiny(epochs=1)), 4)


def test_a_pickle_given_as_checkpoint_is_refused_and_never_executed(tmp_path, code_carrying_pickle):
    marker = tmp_path / "executed"
    evil = tmp_path / "ckpt.safetensors"
    evil.write_bytes(pickle.dumps(code_carrying_pickle(marker)))
    with pytest.raises(
        DataError, match=r"ckpt\.safetensors: not a readable gan-pipeline training checkpoint"
    ):
        resume_point(evil, flatten(_tiny()), 8)
    assert not marker.exists()
    torch.save(code_carrying_pickle(marker), evil)  # torch's zip format, the pickle inside
    with pytest.raises(DataError, match="not a readable gan-pipeline training checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_foreign_or_truncated_file_is_refused(tmp_path):
    weights = tmp_path / "generator.safetensors"
    save_weights(weights, nn.Linear(2, 2), {"model": {}})
    with pytest.raises(DataError, match=r"generator\.safetensors: not a gan-pipeline training checkpoint"):
        load_checkpoint(weights)
    _train(tmp_path, _tiny())
    data = (tmp_path / "ckpt.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataError, match=r"truncated\.safetensors: not a readable gan-pipeline training checkpoint"
    ):
        load_checkpoint(truncated)


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(TrainingDiverged) as err:
        train_gan(_tiny(), _batches(poison_batch=7), checkpointing=Checkpointing(path, flatten(_tiny())))
    assert str(err.value) == (
        f"training diverged at step 7: loss_d is nan; last good checkpoint: {path} (step 4), kept"
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint.state.step == 4
    assert all(torch.isfinite(t).all() for k, t in checkpoint.tensors.items() if t.is_floating_point())


def test_a_non_finite_weight_stops_training_naming_the_weight(tmp_path):
    """A weight that turns infinite without the losses noticing (here a BatchNorm running mean, unused in
    training mode) is caught at the next checkpoint, which is not written; the last good one is kept."""

    def poison(epoch, step, generator):
        if epoch == 1:
            bn = next(m for m in generator.modules() if isinstance(m, nn.BatchNorm2d))
            bn.running_mean.fill_(float("inf"))

    exp = experiment_config(
        "dcgan28", latent_dim=8, epochs=2, lr=2e-4, precision="auto", batch_size=16, checkpoint_every=4
    )
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(TrainingDiverged) as err:
        train_gan(exp, _batches(), on_epoch=poison, checkpointing=Checkpointing(path, flatten(exp)))
    assert re.fullmatch(
        rf"training diverged at step 8: generator weight \S+running_mean is not finite; "
        rf"last good checkpoint: {re.escape(str(path))} \(step 4\), kept",
        str(err.value),
    ), str(err.value)
    assert load_checkpoint(path).state.step == 4


def test_d_winning_totally_for_n_steps_is_a_warning_with_the_step(caplog):
    # G never updates (d_steps beyond the run), so D soon tells G's noise from constant bright images.
    exp = experiment_config(
        "mlp_gan",
        latent_dim=8,
        epochs=30,
        batch_size=16,
        lr=1e-3,
        precision="auto",
        d_steps=10_000,
        d_wins_steps=5,
    )
    images = torch.full((32, 1, 28, 28), 0.9)
    result = train_gan(exp, TensorBatches(images, torch.zeros(32), 16))
    assert len(result.warnings) >= 1
    first = result.warnings[0]
    step = int(first.split(":")[0].removeprefix("step "))
    assert 5 <= step <= 60 and "D has won totally for 5 steps" in first
    assert first in caplog.text


def test_channels_last_weights_resume_with_fused_adam_exactly(tmp_path):
    """The file holds Adam's moments contiguous; restored for channels_last weights they must get the
    weights' layout back, or torch's fused CPU Adam mixes up their elements."""

    def parts() -> CheckpointedObjects:
        torch.manual_seed(0)
        g, d = build_gan("dcgan28", 8)
        for m in (g, d):
            m.to(memory_format=torch.channels_last)
        adam = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)  # noqa: E731
        return CheckpointedObjects(g, d, None, adam(g), adam(d), torch.Generator().manual_seed(0))

    grads = [[torch.randn_like(p) for p in parts().discriminator.parameters()] for _ in range(4)]

    def step(p: CheckpointedObjects, i: int) -> None:
        for param, grad in zip(p.discriminator.parameters(), grads[i], strict=True):
            param.grad = grad.clone()
        p.opt_d.step()

    whole = parts()
    for i in range(4):
        step(whole, i)
    first = parts()
    for i in range(2):
        step(first, i)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, first, identity={}, total_steps=4, state=TrainState(step=2),
                    epoch_rng=first.rng.get_state(), training_code=training_code())  # fmt: skip
    resumed = parts()
    load_checkpoint(path).restore(resumed)
    for p in resumed.discriminator.parameters():
        assert resumed.opt_d.state[p]["exp_avg"].stride() == p.stride()
    for i in range(2, 4):
        step(resumed, i)
    for a, b in zip(whole.discriminator.parameters(), resumed.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_same_training_state_gives_the_same_checkpoint_bytes(tmp_path):
    # Two metadata keys (format, meta): safetensors alone writes them in a varying order.
    torch.manual_seed(0)
    g, d = nn.Linear(2, 3), nn.Linear(3, 1)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    objects = CheckpointedObjects(g, d, None, opt_g, opt_d, torch.Generator().manual_seed(0))
    for i in range(8):
        save_checkpoint(tmp_path / f"{i}.ckpt", objects, identity={"train.lr": 0.1}, total_steps=4,
                        state=TrainState(step=2), epoch_rng=objects.rng.get_state(), training_code="code",
                        extra={"run_id": "r"})  # fmt: skip
    assert len({(tmp_path / f"{i}.ckpt").read_bytes() for i in range(8)}) == 1
    assert load_checkpoint(tmp_path / "0.ckpt").state.step == 2


def test_a_resumed_run_reports_the_time_and_speed_of_the_whole_training(tmp_path):
    """The checkpoint carries the training seconds up to its step: a re-run with nothing left to train
    reports them (not its own few milliseconds) and its speed over all 8 steps of 16 images; the last
    checkpoint's own writing is the only time of the first run it leaves out."""
    first = _train(tmp_path, _tiny(epochs=2))
    saved = load_checkpoint(tmp_path / "ckpt.safetensors").state.seconds
    assert 0 < saved < first.seconds
    again = _train(tmp_path, _tiny(epochs=2))
    assert again.resumed_from == again.steps == 8
    assert saved <= again.seconds < first.seconds
    assert again.images_per_s == pytest.approx(8 * 16 / again.seconds)
    extended = _train(tmp_path, _tiny(epochs=3))
    assert extended.seconds > again.seconds
    assert extended.images_per_s == pytest.approx(12 * 16 / extended.seconds)
