"""Precision choice (train.precision): what auto picks where, bit-identical CPU runs in fp32 and bf16,
reduced precision that stays close to fp32 and keeps the losses fp32, and errors that name the key."""

from __future__ import annotations

import io

import pytest
import torch
from configs import experiment_config
from torch import nn

from gan_pipeline.config import ExperimentConfig
from gan_pipeline.data.loading import TensorBatches, to_float
from gan_pipeline.errors import ParamsError
from gan_pipeline.models import build_gan
from gan_pipeline.runtime import choose_precision, fast_bf16_cpu, seed_everything, to_device
from gan_pipeline.training.loop import train_gan
from gan_pipeline.training.losses import G_LOSSES, Bce
from gan_pipeline.training.steps import StepBatch, gan_step

CPU = torch.device("cpu")


def _exp(model: str, precision: str, seed: int = 0) -> ExperimentConfig:
    return experiment_config(
        model, latent_dim=8, epochs=1, lr=2e-4, batch_size=16, log_every=2, seed=seed, precision=precision
    )


def _batches(n: int = 64) -> TensorBatches:
    g = torch.Generator().manual_seed(1)
    images = to_float(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), (-1.0, 1.0))
    return TensorBatches(images, torch.arange(n) % 10, 16)


@pytest.mark.parametrize("model", ["dcgan28", "convgan128", "dcgan64"])
def test_auto_is_bf16_with_channels_last_for_conv_gans_on_a_bf16_cpu(model):
    precision = choose_precision("auto", CPU, *build_gan(model, 8))
    expected = "bf16, channels_last" if fast_bf16_cpu() else "fp32"
    assert precision.describe() == expected


@pytest.mark.parametrize("model", ["mlp_gan", "cgan"])
def test_auto_is_fp32_for_mlp_gans_on_the_cpu(model):
    assert choose_precision("auto", CPU, *build_gan(model, 8)).describe() == "fp32"


def test_explicit_choices_are_kept_and_channels_last_only_goes_with_convs():
    conv, mlp = build_gan("dcgan28", 8), build_gan("cgan", 8)
    assert choose_precision("fp32", CPU, *conv).describe() == "fp32"
    assert choose_precision("bf16", CPU, *conv).describe() == "bf16, channels_last"
    assert choose_precision("bf16", CPU, *mlp).describe() == "bf16"
    fp16 = choose_precision("fp16", CPU, *conv)
    assert fp16.describe() == "fp16, channels_last" and fp16.scaler is not None


def test_an_unknown_precision_names_the_key():
    with pytest.raises(
        ParamsError, match=r"^train\.precision: expected one of auto, fp32, bf16, fp16, got 'fp8'"
    ):
        choose_precision("fp8", CPU, nn.Linear(2, 2))


def test_fp16_on_a_cpu_without_fp16_kernels_names_the_key(monkeypatch):
    monkeypatch.setattr("gan_pipeline.runtime._fp16_works_on_cpu", lambda: False)
    with pytest.raises(ParamsError, match=r"^train\.precision: expected auto, fp32 or bf16 on the CPU"):
        choose_precision("fp16", CPU, nn.Linear(2, 2))


def test_channels_last_applies_to_weights_and_4d_batches_only():
    generator, discriminator = build_gan("dcgan28", 8)
    precision = choose_precision("bf16", CPU, generator, discriminator)
    precision.prepare(generator, discriminator)
    assert discriminator.net[2].weight.is_contiguous(memory_format=torch.channels_last)  # (128, 64, 4, 4)
    assert not discriminator.net[2].weight.is_contiguous()
    assert precision.batch(torch.zeros(2, 3, 4, 4)).is_contiguous(memory_format=torch.channels_last)
    z = torch.zeros(2, 8)
    assert precision.batch(z) is z
    assert to_device(z, CPU) is z


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cpu_run_is_bit_identical_for_the_same_params_and_seed(precision):
    batches = _batches()
    a = train_gan(_exp("dcgan28", precision), batches)
    b = train_gan(_exp("dcgan28", precision), batches)
    assert a.precision == b.precision == ("fp32" if precision == "fp32" else "bf16, channels_last")
    for (key, wa), wb in zip(
        a.generator.state_dict().items(), b.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(wa, wb), key
    for (key, wa), wb in zip(
        a.discriminator.state_dict().items(), b.discriminator.state_dict().values(), strict=True
    ):
        assert torch.equal(wa, wb), key
    assert a.history == b.history


def test_bf16_training_differs_from_fp32_but_stays_close():
    batches = _batches()
    full = train_gan(_exp("dcgan28", "fp32"), batches)
    half = train_gan(_exp("dcgan28", "bf16"), batches)
    seed_everything(0)  # the loop's init, again
    start = build_gan("dcgan28", 8, init_std=0.02)[0].net[0].weight
    wf, wh = full.generator.net[0].weight, half.generator.net[0].weight
    assert wh.dtype == torch.float32  # autocast: the weights (and the optimizer) stay fp32
    assert not torch.equal(wf, wh)
    # bf16 changes the path of the 4 Adam steps a little, not where they go
    assert (wf - wh).abs().mean() < 0.3 * (wf - start).abs().mean()  # measured 0.19 here
    assert full.history[-1]["loss_d"] == pytest.approx(half.history[-1]["loss_d"], abs=0.05)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_steps_keep_logits_losses_and_stats_fp32(precision, monkeypatch):
    generator, discriminator = build_gan("dcgan28", 8)
    chosen = choose_precision(precision, CPU, generator, discriminator)
    chosen.prepare(generator, discriminator)
    seen = []
    loss = G_LOSSES["non_saturating"]
    monkeypatch.setattr("gan_pipeline.training.losses.d_loss_bce", lambda r, f, label: seen.append(r.dtype) or
                        nn.functional.softplus(-r).mean() + nn.functional.softplus(f).mean())  # fmt: skip
    monkeypatch.setitem(G_LOSSES, "non_saturating", lambda s: seen.append(s.dtype) or loss(s))
    opt_g = torch.optim.Adam(generator.parameters())
    opt_d = torch.optim.Adam(discriminator.parameters())
    before = discriminator.net[0].weight.detach().clone()
    real = chosen.batch(torch.rand(4, 1, 28, 28))
    batch = StepBatch(real, (), (), torch.randn(4, 8))
    stats = gan_step(generator, discriminator, opt_g, opt_d, batch, Bce(), precision=chosen)
    assert seen == [torch.float32, torch.float32]
    assert all(isinstance(v, float) and v == v for v in stats.values())
    assert not torch.equal(before, discriminator.net[0].weight)  # the (scaled, for fp16) step was taken


def test_a_progress_line_goes_to_stderr_unless_progress_is_off(capsys, monkeypatch):
    from gan_pipeline.runtime import progress_line

    monkeypatch.delenv("GAN_PIPELINE_PROGRESS", raising=False)
    progress_line("classifier: 10,000 samples")
    assert capsys.readouterr() == ("", "classifier: 10,000 samples\n")
    monkeypatch.setenv("GAN_PIPELINE_PROGRESS", "0")
    progress_line("classifier: 10,000 samples")
    assert capsys.readouterr() == ("", "")


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_in_a_log_progress_is_one_line_per_tenth_of_the_work_with_the_rate_and_the_postfix():
    from gan_pipeline.runtime import LineProgress

    clock, out = _Clock(), io.StringIO()
    with LineProgress(200, "train dcgan28", "step", clock=clock, stream=out) as bar:
        for _ in range(200):
            clock.now += 0.5  # 2 steps/s
            bar.update()
            bar.set_postfix(loss_d="0.693")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10%, 20%, ..., 100%, and no second line at the close
    assert lines[0] == "train dcgan28: 20/200 step (10%), 2.0 step/s, loss_d=0.693"
    assert lines[-1] == "train dcgan28: 200/200 step (100%), 2.0 step/s, loss_d=0.693"


def test_in_a_log_slow_progress_still_says_something_every_30_seconds_and_where_it_stopped():
    from gan_pipeline.runtime import LineProgress

    clock, out = _Clock(), io.StringIO()
    bar = LineProgress(10_000, "inception", "image", initial=1_000, clock=clock, stream=out)
    for _ in range(100):  # 100 images in 100 s: under a tenth, three 30-second lines
        clock.now += 1.0
        bar.update()
    bar.close()
    bar.close()  # a second close prints nothing
    assert out.getvalue().splitlines() == [
        "inception: 1030/10000 image (10%), 1.0 image/s",
        "inception: 1060/10000 image (10%), 1.0 image/s",
        "inception: 1090/10000 image (10%), 1.0 image/s",
        "inception: 1100/10000 image (11%), 1.0 image/s",
    ]


def test_progress_is_a_bar_on_a_terminal_lines_in_a_log_and_nothing_when_off(monkeypatch):
    from tqdm import tqdm

    from gan_pipeline.runtime import LineProgress, progress

    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    monkeypatch.delenv("GAN_PIPELINE_PROGRESS", raising=False)
    assert isinstance(progress(10, "x", "step"), LineProgress)
    assert progress(10, "x", "step", enabled=False).disable
    monkeypatch.setenv("GAN_PIPELINE_PROGRESS", "0")
    assert progress(10, "x", "step").disable

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setenv("GAN_PIPELINE_PROGRESS", "1")
    bar = progress(10, "x", "step")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    monkeypatch.setenv("GAN_PIPELINE_PROGRESS", "lines")
    assert isinstance(progress(10, "x", "step"), LineProgress)
