"""The in-training checks: the tutorials' "do 100 samples cover all 10 digits?" made automatic, a score
that keeps the best generator, and the alarms that say when training turns.

An `on_epoch` hook for the training loop. Every `monitor.eval_every` epochs it draws the same latent batch
(its own seed, so training's random stream is untouched), classifies the samples with the digit
classifier exactly as evaluate does (uint8 round trip, [-1, 1]), and records coverage, the class
histogram's KL from uniform, given real digits `fid_classifier` of the samples against as many seeded
training digits, and with monitor.score fid_inception the standard Inception FID of the same uint8 samples
against the reference stage's training-digit features. Then:
- the mode-collapse alarm: coverage falls below `min_coverage` after having reached it → warn or stop
  (`on_collapse`). Coverage counts the digits that the training data holds, and the threshold is at most
  their number: with a digit missing, min_coverage 10 could never be reached, and so the alarm never fire.
- keep-best: the checks rank by `monitor.score` alone (lower is better: a FID already grows when digits
  go missing, while the coverage of a few hundred samples is too noisy to rank by: on the default dcgan28
  it read 9 at the last check, whose FID was the best, after 10 at the one before); with `keep_best` the
  best check's generator weights are kept (`best_state`, saved in each checkpoint).
  GANs without spectral norm typically peak and then diverge while D's loss says nothing, so the last
  step's generator is often not the best one.
- the divergence alarm: `diverge_checks` checks in a row whose score is worse than the best by more than
  the fraction `diverge_margin` → warn, or end training there (`on_diverge: stop`, StopTraining).
Everything it decides is a function of its rows, so a resumed run rebuilds its state from the rows that
the checkpoint carries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gan_pipeline.config import MonitorConfig
from gan_pipeline.data.loading import to_float
from gan_pipeline.errors import PipelineError
from gan_pipeline.metrics.coverage import digit_coverage, digit_report
from gan_pipeline.metrics.fid import fid_from_features
from gan_pipeline.models import GanSpec
from gan_pipeline.models.classifier import ClassifierFeatures
from gan_pipeline.runtime import module_device
from gan_pipeline.sampling import generate
from gan_pipeline.training.classifier import predict_proba
from gan_pipeline.training.guards import StopTraining


class ModeCollapse(PipelineError):
    """Raised by the monitor when coverage collapses and monitor.on_collapse is 'stop'."""


# best: 1 where the check became the best so far; worse_checks: checks in a row, up to this one, worse
# than the best by more than diverge_margin; alarm / diverged: 1 where the collapse / divergence alarm went
# off. fid_classifier is None without real digits to compare with. With monitor.score fid_inception the
# rows and columns have fid_inception too, after fid_classifier (`TrainingMonitor.columns`).
MONITOR_COLUMNS = [
    "step",
    "epoch",
    "coverage",
    "kl_from_uniform",
    "fid_classifier",
    "best",
    "worse_checks",
    "alarm",
    "diverged",
]
FEATURE_BATCH = 1000  # samples per classifier-feature batch
SHOWN = 100  # samples of each check that `show` gets (a 10x10 grid)


class TrainingMonitor:
    """An on_epoch(epoch, step, generator) hook; `rows` (MONITOR_COLUMNS) hold every check so far."""

    def __init__(
        self,
        cfg: MonitorConfig,
        classifier: nn.Module,
        spec: GanSpec,
        latent_dim: int,
        confidence: float,
        min_fraction: float,
        log: Callable[[int, dict[str, float]], None] | None = None,
        rows: list[dict[str, Any]] | None = None,
        digits: Sequence[int] = tuple(range(10)),
        real: torch.Tensor | None = None,
        best_state: dict[str, torch.Tensor] | None = None,
        show: Callable[[int, np.ndarray], None] | None = None,
        fid_inception: Callable[[np.ndarray], float] | None = None,
    ):
        """`rows` and `best_state`: the checks and the kept weights of the run so far, when it resumes (so
        the logs and the alarms go on); `digits`: those the training data holds (coverage counts only
        them); `real`: training digits (N, 1, 28, 28) in [-1, 1] for fid_classifier (needed when it is
        the score); `show(step, images)`: gets the first SHOWN samples of each check (uint8 (n, H, W), the
        same latents every time), e.g. to log them as an image over steps; `fid_inception(images)`: the
        Inception FID of a check's uint8 samples (n, H, W) against real digits (needed when it is the
        score, called only then)."""
        if cfg.eval_every is None:
            raise ValueError("monitor.eval_every is null: the monitor is off")
        if real is None and cfg.score == "fid_classifier":
            raise ValueError("monitor.score fid_classifier needs real digits to compare the samples with")
        if fid_inception is None and cfg.score == "fid_inception":
            raise ValueError("monitor.score fid_inception needs the Inception FID of the samples")
        self.fid_inception = fid_inception if cfg.score == "fid_inception" else None
        self.cfg, self.classifier, self.spec, self.latent_dim = cfg, classifier, spec, latent_dim
        self.show = show
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
        self.features = ClassifierFeatures(classifier) if real is not None else None
        self.real_features = self._features(real) if real is not None else None
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.best_state = best_state if cfg.keep_best else None
        # coverage has been >= min_coverage at some check
        self.reached = any(row["coverage"] >= self.min_coverage for row in self.rows)

    @property
    def columns(self) -> list[str]:
        """The rows' columns: MONITOR_COLUMNS, with fid_inception after fid_classifier when it is scored."""
        if self.fid_inception is None:
            return MONITOR_COLUMNS
        at = MONITOR_COLUMNS.index("fid_classifier") + 1
        return [*MONITOR_COLUMNS[:at], "fid_inception", *MONITOR_COLUMNS[at:]]

    @property
    def best(self) -> dict[str, Any] | None:
        """The best-ranked check so far (its row), None before the first check."""
        return next((row for row in reversed(self.rows) if row.get("best")), None)

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """What each checkpoint holds besides the rows: the kept generator's weights, as `best`."""
        return {"best": self.best_state} if self.best_state is not None else {}

    def __call__(self, epoch: int, step: int, generator: nn.Module) -> None:
        if epoch % self.cfg.eval_every:
            return
        was_training = generator.training
        images, _ = generate(generator, self.spec, self.latent_dim, self.cfg.n_samples, self.cfg.seed)
        generator.train(was_training)
        if self.show is not None:
            self.show(step, images[:SHOWN])
        samples = to_float(images, (-1.0, 1.0))
        probs = predict_proba(self.classifier, samples)
        report = digit_report(probs, self.confidence, self.min_fraction)
        histogram = [report["class_histogram"][str(d)] for d in self.digits]
        coverage = digit_coverage(histogram, len(probs), self.min_fraction)
        collapsed = self.reached and coverage < self.min_coverage
        self.reached |= coverage >= self.min_coverage
        fid = None
        if self.real_features is not None:
            fid = fid_from_features(self.real_features, self._features(samples))
        row = {
            "step": step,
            "epoch": epoch,
            "coverage": coverage,
            "kl_from_uniform": report["kl_from_uniform"],
        }
        row["fid_classifier"] = fid
        if self.fid_inception is not None:
            row["fid_inception"] = self.fid_inception(images)
        row.update(self._judge(row), alarm=int(collapsed))
        self.rows.append(row)
        if row["best"] and self.cfg.keep_best:
            self.best_state = {k: v.detach().clone() for k, v in generator.state_dict().items()}
        if self.log is not None:
            logged = {k: v for k, v in row.items() if k not in ("step", "epoch") and v is not None}
            self.log(step, {f"monitor_{k}": v for k, v in logged.items()})
        if collapsed:
            message = (
                f"mode collapse at epoch {epoch} (step {step}): {coverage} of the {len(self.digits)} digits "
                f"in the data covered by {self.cfg.n_samples} samples, below {self._threshold()} "
                f"(KL from uniform {report['kl_from_uniform']:.3f})"
            )
            if self.cfg.on_collapse == "stop":
                raise ModeCollapse(message)
            print(f"warning: {message}", file=sys.stderr)
        if row["diverged"]:
            self._diverged(row)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier features (N, feature_dim) float64 of images (N, 1, 28, 28) in [-1, 1]."""
        dev = module_device(self.classifier)
        return torch.cat([self.features(batch.to(dev)).cpu() for batch in images.split(FEATURE_BATCH)])

    def _rank(self, row: dict[str, Any]) -> float:
        """Lower is better: the score."""
        return row[self.cfg.score]

    def _judge(self, row: dict[str, Any]) -> dict[str, int]:
        """The check's best, worse_checks and diverged columns, given the rows before it."""
        best, previous = self.best, (self.rows[-1] if self.rows else None)
        if best is None or self._rank(row) < self._rank(best):
            return {"best": 1, "worse_checks": 0, "diverged": 0}
        worse = row[self.cfg.score] > best[self.cfg.score] * (1 + self.cfg.diverge_margin)
        streak = previous.get("worse_checks", 0) + 1 if worse else 0
        return {"best": 0, "worse_checks": streak, "diverged": int(streak == self.cfg.diverge_checks)}

    def _diverged(self, row: dict[str, Any]) -> None:
        """Warn, or stop training (on_diverge), the best check's generator being kept."""
        cfg, best, score = self.cfg, self.best, self.cfg.score
        kept = "kept" if cfg.keep_best else "not kept (monitor.keep_best is false)"
        message = (
            f"training is diverging at epoch {row['epoch']} (step {row['step']}): {score} "
            f"{row[score]:.4g} is more than monitor.diverge_margin {cfg.diverge_margin:g} worse than the "
            f"best, {best[score]:.4g} at step {best['step']}, for monitor.diverge_checks "
            f"{cfg.diverge_checks} checks in a row; the best generator is {kept}"
        )
        if cfg.on_diverge == "stop":
            print(f"warning: {message}; training stops here (monitor.on_diverge: stop)", file=sys.stderr)
            raise StopTraining(message)
        print(f"warning: {message}", file=sys.stderr)

    def _threshold(self) -> str:
        if self.min_coverage == self.cfg.min_coverage:
            return f"monitor.min_coverage {self.min_coverage}"
        return (
            f"{self.min_coverage} (monitor.min_coverage {self.cfg.min_coverage} capped at the digits present)"
        )
