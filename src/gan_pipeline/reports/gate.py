"""The retrain gate: does each retrained experiment's `metrics/<exp>.json` hold up against the base's?

A retrained experiment fails when `coverage` or `label_accuracy` drops, or a `fid_*` / `kid_*` score rises,
by more than its tolerance. Tolerances come from the spread of each metric over training seeds, measured by
`benchmarks/seed_spread.py` into `benchmarks/tolerances.json` with the rule of `tolerance_from_spread`; a
metric that file has no tolerance for gets `default_tolerance`, and the report names it. Beside the verdict,
the gate notes when the environment recorded in `metrics/info/<exp>.json` (torch, CPU capability, threads,
device) differs from the base's, since that alone moves the metrics.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan_pipeline.errors import DataError, PipelineError
from gan_pipeline.io import read_json

TOLERANCES = Path("benchmarks/tolerances.json")
# Two runs that differ only by their seed differ by sqrt(2) times one run's std: the tolerance allows three
# standard deviations of that difference. A few seeds pin a std down poorly (from three values the estimate
# is below half the true std one time in five), hence a floor relative to the mean.
SPREAD_STDS = 3 * math.sqrt(2)
RELATIVE_FLOOR = 0.05
TOLERANCE_RULE = (
    f"tolerance = max(3 * sqrt(2) * std, max - min, {RELATIVE_FLOOR} * |mean|) over the seeds, std with "
    "N - 1 (three standard deviations of the difference of two runs); coverage: rounded up to whole "
    "digits, at least 1"
)
# Keys of a metrics file that record how a score was computed (sample sizes, the real-vs-real floor), not a
# measurement of the generator.
_SETTING = re.compile(r"_n_(real|fake)$|_subset_size$|_real_floor|^prdc_nearest_k$")
_NOT_GATED = re.compile(r"_std$")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric measurements of a metrics file: every int or float value that is not a setting."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not _SETTING.search(k)
    }


def worse_when(metric: str) -> int | None:
    """+1 when a rise of `metric` is a regression (fid_*, kid_*), -1 when a drop is (coverage,
    label_accuracy), None when the gate does not check it (settings, *_std, everything else)."""
    if _SETTING.search(metric) or _NOT_GATED.search(metric):
        return None
    if metric.startswith(("fid_", "kid_")):
        return 1
    if metric in ("coverage", "label_accuracy"):
        return -1
    return None


def tolerance_from_spread(metric: str, values: Sequence[float]) -> float:
    """How far `metric` may move between two runs that differ only by their training seed, from its values
    over at least two seeds: TOLERANCE_RULE."""
    if len(values) < 2:
        raise ValueError(f"{metric}: a spread needs at least two seeds, got {len(values)}")
    tolerance = max(
        SPREAD_STDS * statistics.stdev(values),
        max(values) - min(values),
        RELATIVE_FLOOR * abs(statistics.fmean(values)),
    )
    return float(max(1, math.ceil(tolerance))) if metric == "coverage" else tolerance


def default_tolerance(metric: str, base: float) -> float:
    """The tolerance of a metric with no measured spread: a digit of coverage, 0.05 of label accuracy, half
    the base value of a fid_* / kid_* score. Wide enough for seed noise, narrow enough for a ruined model."""
    if metric == "coverage":
        return 1.0
    if metric == "label_accuracy":
        return 0.05
    return 0.5 * abs(base)


def load_tolerances(path: Path) -> dict[str, dict[str, float]]:
    """experiment -> metric -> tolerance, from a file that benchmarks/seed_spread.py wrote; {} without one."""
    if not path.exists():
        return {}
    data = read_json(path)
    try:
        return {
            exp: {metric: float(m["tolerance"]) for metric, m in entry["metrics"].items()}
            for exp, entry in data["experiments"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: not a tolerances file of benchmarks/seed_spread.py ({exc!r})") from None


@dataclass(frozen=True)
class Check:
    """One gated metric of one experiment: its base and current values and how far it may worsen."""

    experiment: str
    metric: str
    base: float
    now: float
    tolerance: float
    direction: int  # +1: a rise is worse; -1: a drop is worse

    @property
    def failed(self) -> bool:
        return not math.isfinite(self.now) or (self.now - self.base) * self.direction > self.tolerance

    def describe(self) -> str:
        """E.g. `cgan fid_classifier 76.9 -> 412.3 (+335.4 > tolerance 6.1)`."""
        head = f"{self.experiment} {self.metric} {self.base:.4g} -> {self.now:.4g}"
        if not math.isfinite(self.now):
            return f"{head} (not a number)"
        change = self.now - self.base
        if not self.failed:
            return f"{head} ({change:+.4g}, within tolerance {self.tolerance:.4g})"
        if self.direction > 0:
            return f"{head} ({change:+.4g} > tolerance {self.tolerance:.4g})"
        return f"{head} ({change:+.4g}, a drop > tolerance {self.tolerance:.4g})"


@dataclass
class GateResult:
    """What the gate found for the retrained experiments."""

    checks: list[Check] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # experiments without metrics at the base revision
    no_metrics: list[str] = field(default_factory=list)  # retrained, but no metrics file in the workspace
    defaulted: list[str] = field(default_factory=list)  # `exp metric` checked with default_tolerance
    dropped: list[str] = field(default_factory=list)  # `exp metric` at the base, missing now
    notes: list[str] = field(default_factory=list)  # `Note: ...` lines (the environment)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.no_metrics)

    def verdict(self, shown: int = 3) -> str:
        """The report's first line: `PASS: ...` or `FAIL: ...` with the first `shown` failures."""
        if self.failed:
            reasons = [f"{exp}: no metrics/{exp}.json in the workspace" for exp in self.no_metrics]
            reasons += [c.describe() for c in self.failures]
            more = f"; and {len(reasons) - shown} more (see Gate)" if len(reasons) > shown else ""
            return f"FAIL: {'; '.join(reasons[:shown])}{more}"
        checked = list(dict.fromkeys(c.experiment for c in self.checks))
        parts = [f"{', '.join(checked)} within tolerance ({len(self.checks)} metrics)"] if checked else []
        if self.new:
            parts.append(f"{', '.join(self.new)} new since the base (nothing to compare)")
        return f"PASS: {'; '.join(parts) or 'no experiment retrained'}"

    def section(self, base: str, tolerances: Path) -> list[str]:
        """The report's Gate section: every check as a table row, then what was not compared and why."""
        lines = [f"## Gate (against `{base}`, tolerances from `{tolerances}`)", ""]
        if self.checks:
            lines += [
                "| experiment | metric | base | now | change | tolerance | |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for c in self.checks:
                mark = "**FAIL**" if c.failed else "ok"
                lines.append(f"| {c.experiment} | {c.metric} | {c.base:.4g} | {c.now:.4g} | "
                             f"{c.now - c.base:+.4g} | {c.tolerance:.4g} | {mark} |")  # fmt: skip
            lines.append("")
        for label, items in (
            ("New since the base, passed without a comparison", self.new),
            ("Retrained without a metrics file (a failure)", self.no_metrics),
            ("No measured tolerance, checked with the default (README, CI retraining)", self.defaulted),
            ("At the base, missing now (not compared)", self.dropped),
        ):
            if items:
                lines += [f"- {label}: {', '.join(items)}"]
        if not (self.checks or self.new or self.no_metrics):
            lines.append("No experiment retrained.")
        return lines + [""]


def compare(
    experiment: str,
    base: dict[str, Any],
    now: dict[str, Any],
    tolerances: dict[str, float],
    result: GateResult,
) -> None:
    """Add to `result` the checks of one experiment's current metrics against its base metrics."""
    now_values = scalar_metrics(now)
    for metric, base_value in scalar_metrics(base).items():
        direction = worse_when(metric)
        if direction is None:
            continue
        if metric not in now_values:
            result.dropped.append(f"{experiment} {metric}")
            continue
        tolerance = tolerances.get(metric)
        if tolerance is None:
            tolerance = default_tolerance(metric, base_value)
            result.defaulted.append(f"{experiment} {metric}")
        result.checks.append(Check(experiment, metric, base_value, now_values[metric], tolerance, direction))


def run_gate(root: Path, base: str, experiments: Sequence[str], tolerances_path: Path) -> GateResult:
    """Gate the `experiments` retrained in the workspace at `root` against git revision `base`."""
    _check_revision(root, base)
    tolerances = load_tolerances(tolerances_path)
    result = GateResult()
    for exp in experiments:
        path = Path("metrics") / f"{exp}.json"
        if not (root / path).exists():
            result.no_metrics.append(exp)
            continue
        base_metrics = at_revision(root, base, path)
        if base_metrics is None:
            result.new.append(exp)
            continue
        compare(exp, base_metrics, read_json(root / path), tolerances.get(exp, {}), result)
    result.notes = environment_notes(root, base, experiments)
    return result


def environment_notes(root: Path, base: str, experiments: Iterable[str]) -> list[str]:
    """`Note: ...` lines where `metrics/info/<exp>.json`'s "environment" differs from the base revision's,
    or is known on one side only; nothing for an experiment with no record on either side."""
    notes: dict[str, list[str]] = {}
    for exp in experiments:
        path = Path("metrics") / "info" / f"{exp}.json"
        now = read_json(root / path).get("environment") if (root / path).exists() else None
        then = (at_revision(root, base, path) or {}).get("environment")
        if now is None and then is None:
            continue
        if then is None:
            note = "environment of the base unknown"
        elif now is None:
            note = "environment of this run unknown"
        else:
            diffs = [f"{k} {then.get(k, '?')} -> {now.get(k, '?')}" for k in sorted({*then, *now})
                     if then.get(k) != now.get(k)]  # fmt: skip
            if not diffs:
                continue
            note = f"environment differs from the base: {', '.join(diffs)}"
        notes.setdefault(note, []).append(exp)
    return [f"Note: {note} ({', '.join(exps)})" for note, exps in notes.items()]


def at_revision(root: Path, rev: str, path: Path) -> dict[str, Any] | None:
    """The JSON file `path` (relative to `root`) as git revision `rev` has it, or None where it has none."""
    proc = subprocess.run(
        ["git", "show", f"{rev}:./{path.as_posix()}"], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise DataError(f"{rev}:{path}: not valid JSON ({exc})") from None


def _check_revision(root: Path, rev: str) -> None:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root, capture_output=True
    )
    if proc.returncode != 0:
        raise PipelineError(f"--base {rev}: not a commit of the git repository at {root}")
