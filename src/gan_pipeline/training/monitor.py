"""The mode-collapse alarm: the tutorials' "do 100 samples cover all 10 digits?" check, made automatic.

An `on_epoch` hook for the training loop. Every `monitor.eval_every` epochs it draws the same latent batch
(its own seed, so training's random stream is untouched), classifies the samples with the digit
classifier exactly as evaluate does (uint8 round trip, [-1, 1]), and reports coverage and the class
histogram's KL from uniform. When coverage falls below `min_coverage` after having reached it, it warns
or stops training, as `on_collapse` says.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import nn

from gan_pipeline.config import MonitorConfig
from gan_pipeline.data.loading import to_float
from gan_pipeline.errors import PipelineError
from gan_pipeline.metrics.coverage import digit_report
from gan_pipeline.models import GanSpec
from gan_pipeline.sampling import generate
from gan_pipeline.training.classifier import predict_proba


class ModeCollapse(PipelineError):
    """Raised by the monitor when coverage collapses and monitor.on_collapse is 'stop'."""


MONITOR_COLUMNS = ["step", "epoch", "coverage", "kl_from_uniform", "alarm"]


class CollapseMonitor:
    """An on_epoch(epoch, step, generator) hook; `rows`: step, epoch, coverage, kl_from_uniform, alarm."""

    def __init__(
        self,
        cfg: MonitorConfig,
        classifier: nn.Module,
        spec: GanSpec,
        latent_dim: int,
        confidence: float,
        min_fraction: float,
        log: Callable[[int, dict[str, float]], None] | None = None,
        rows: list[dict[str, float]] | None = None,
    ):
        """`rows`: the checks of the run so far, when it resumes (so the log and the alarm go on)."""
        if cfg.eval_every is None:
            raise ValueError("monitor.eval_every is null: the monitor is off")
        self.cfg, self.classifier, self.spec, self.latent_dim = cfg, classifier, spec, latent_dim
        self.confidence, self.min_fraction, self.log = confidence, min_fraction, log
        self.rows: list[dict[str, float]] = list(rows or [])
        # coverage has been >= min_coverage at some check
        self.reached = any(row["coverage"] >= cfg.min_coverage for row in self.rows)

    def __call__(self, epoch: int, step: int, generator: nn.Module) -> None:
        if epoch % self.cfg.eval_every:
            return
        was_training = generator.training
        images, _ = generate(generator, self.spec, self.latent_dim, self.cfg.n_samples, self.cfg.seed)
        generator.train(was_training)
        probs = predict_proba(self.classifier, to_float(images, (-1.0, 1.0)))
        report = digit_report(probs, self.confidence, self.min_fraction)
        coverage = report["coverage"]
        collapsed = self.reached and coverage < self.cfg.min_coverage
        self.reached |= coverage >= self.cfg.min_coverage
        values = (step, epoch, coverage, report["kl_from_uniform"], int(collapsed))
        row = dict(zip(MONITOR_COLUMNS, values, strict=True))
        self.rows.append(row)
        if self.log is not None:
            self.log(step, {f"monitor_{k}": v for k, v in row.items() if k not in ("step", "epoch")})
        if collapsed:
            message = (
                f"mode collapse at epoch {epoch} (step {step}): {coverage} of 10 digits covered by "
                f"{self.cfg.n_samples} samples, below monitor.min_coverage {self.cfg.min_coverage} "
                f"(KL from uniform {report['kl_from_uniform']:.3f})"
            )
            if self.cfg.on_collapse == "stop":
                raise ModeCollapse(message)
            print(f"warning: {message}", file=sys.stderr)
