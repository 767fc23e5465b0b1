"""The mode-collapse alarm: the tutorials' "do 100 samples cover all 10 digits?" check, made automatic.

An `on_epoch` hook for the training loop. Every `monitor.eval_every` epochs it draws the same latent batch
(its own seed, so training's random stream is untouched), classifies the samples with the digit
classifier exactly as evaluate does (uint8 round trip, [-1, 1]), and reports coverage and the class
histogram's KL from uniform. When coverage falls below `min_coverage` after having reached it, it warns
or stops training, as `on_collapse` says. Coverage counts the digits that the training data holds, and the
threshold is at most their number: with a digit missing, min_coverage 10 could never be reached, and so
the alarm never fire.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from torch import nn

from gan_pipeline.config import MonitorConfig
from gan_pipeline.data.loading import to_float
from gan_pipeline.errors import PipelineError
from gan_pipeline.metrics.coverage import digit_coverage, digit_report
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
        digits: Sequence[int] = tuple(range(10)),
    ):
        """`rows`: the checks of the run so far, when it resumes (so the log and the alarm go on); `digits`:
        those the training data holds (coverage counts only them)."""
        if cfg.eval_every is None:
            raise ValueError("monitor.eval_every is null: the monitor is off")
        self.cfg, self.classifier, self.spec, self.latent_dim = cfg, classifier, spec, latent_dim
        self.confidence, self.min_fraction, self.log = confidence, min_fraction, log
        self.digits = sorted(digits)
        self.min_coverage = min(cfg.min_coverage, len(self.digits))
        if self.min_coverage < cfg.min_coverage:
            missing = sorted(set(range(10)) - set(self.digits))
            print(
                f"warning: monitor.min_coverage {cfg.min_coverage} is more than the {len(self.digits)} "
                f"digits in the training data (it has no {', '.join(map(str, missing))}): the alarm goes off "
                f"when coverage falls below {self.min_coverage}",
                file=sys.stderr,
            )
        self.rows: list[dict[str, float]] = list(rows or [])
        # coverage has been >= min_coverage at some check
        self.reached = any(row["coverage"] >= self.min_coverage for row in self.rows)

    def __call__(self, epoch: int, step: int, generator: nn.Module) -> None:
        if epoch % self.cfg.eval_every:
            return
        was_training = generator.training
        images, _ = generate(generator, self.spec, self.latent_dim, self.cfg.n_samples, self.cfg.seed)
        generator.train(was_training)
        probs = predict_proba(self.classifier, to_float(images, (-1.0, 1.0)))
        report = digit_report(probs, self.confidence, self.min_fraction)
        histogram = [report["class_histogram"][str(d)] for d in self.digits]
        coverage = digit_coverage(histogram, len(probs), self.min_fraction)
        collapsed = self.reached and coverage < self.min_coverage
        self.reached |= coverage >= self.min_coverage
        values = (step, epoch, coverage, report["kl_from_uniform"], int(collapsed))
        row = dict(zip(MONITOR_COLUMNS, values, strict=True))
        self.rows.append(row)
        if self.log is not None:
            self.log(step, {f"monitor_{k}": v for k, v in row.items() if k not in ("step", "epoch")})
        if collapsed:
            message = (
                f"mode collapse at epoch {epoch} (step {step}): {coverage} of the {len(self.digits)} digits "
                f"in the data covered by {self.cfg.n_samples} samples, below {self._threshold()} "
                f"(KL from uniform {report['kl_from_uniform']:.3f})"
            )
            if self.cfg.on_collapse == "stop":
                raise ModeCollapse(message)
            print(f"warning: {message}", file=sys.stderr)

    def _threshold(self) -> str:
        if self.min_coverage == self.cfg.min_coverage:
            return f"monitor.min_coverage {self.min_coverage}"
        return (
            f"{self.min_coverage} (monitor.min_coverage {self.cfg.min_coverage} capped at the digits present)"
        )
