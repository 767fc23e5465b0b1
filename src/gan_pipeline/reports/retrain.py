"""The Markdown report of a CI retrain (scripts/retrain_report.sh) and its gate: the first line says PASS or
FAIL (a retrained experiment's metrics worse than the base revision's by more than their tolerance, see
`gan_pipeline.reports.gate`), then which stages ran, `dvc params diff` and `dvc metrics diff` against the
base, the gate's checks and the sample grids of the experiments that changed. Exits 1 on FAIL, after
writing the report.

    python -m gan_pipeline.reports.retrain --base main --repro-log repro.log --out reports/retrain
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from gan_pipeline.errors import PipelineError, exit_on_error
from gan_pipeline.io import write_text
from gan_pipeline.reports.gate import TOLERANCES, run_gate

# What `dvc repro` prints per stage (DVC 3): it ran, it was restored from the run-cache, or nothing changed.
_OUTCOMES = {
    "ran": re.compile(r"^Running stage '([^']+)'"),
    "restored": re.compile(r"^Stage '([^']+)' is cached - skipping run"),
    "unchanged": re.compile(r"^Stage '([^']+)' didn't change, skipping"),
}


def stages_by_outcome(repro_output: str) -> dict[str, list[str]]:
    """The stages of a `dvc repro` / `dvc exp run` output by outcome: ran, restored (run-cache), unchanged."""
    found: dict[str, list[str]] = {outcome: [] for outcome in _OUTCOMES}
    for line in repro_output.splitlines():
        for outcome, pattern in _OUTCOMES.items():
            if match := pattern.match(line):
                found[outcome].append(match.group(1))
    return found


SAMPLE_KINDS = ("train", "sample")  # the stages that (re)make an experiment's samples
# ... and its metrics: the gate checks the experiments with one of these among the stages that ran.
METRIC_KINDS = (*SAMPLE_KINDS, "evaluate", "train_faces", "sample_faces", "evaluate_faces")


def changed_experiments(stages: Iterable[str], kinds: Iterable[str] = SAMPLE_KINDS) -> list[str]:
    """Experiments with a `<kind>@<exp>` stage among `stages`, kind one of `kinds` (by default those whose
    samples were (re)made: `train@`, `sample@`), in order of first appearance."""
    kinds = tuple(kinds)
    found = []
    for stage in stages:
        kind, _, exp = stage.partition("@")
        if kind in kinds and exp and exp not in found:
            found.append(exp)
    return found


def _dvc_md(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["dvc", *args, "--md"], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"dvc {' '.join(args)}: failed ({last})")
    return proc.stdout.strip() or "No changes."


def _stage_list(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names) if names else "none"


def retrain_report(
    root: Path, base: str, repro_output: str, out_dir: Path, tolerances: Path = TOLERANCES
) -> tuple[str, bool]:
    """Write `<out_dir>/report.md` (and `<out_dir>/<exp>-grid.png` for each changed experiment); return it
    and whether the gate passed. `tolerances` is relative to `root` unless absolute.

    Grids are linked relative to the report, so the folder is a self-contained CI artifact."""
    outcomes = stages_by_outcome(repro_output)
    rebuilt = outcomes["ran"] + outcomes["restored"]
    gate = run_gate(root, base, changed_experiments(rebuilt, METRIC_KINDS), root / tolerances)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        gate.verdict(),
        *gate.notes,
        "",
        f"# Retrain report: `{head or 'workspace'}` against `{base}`",
        "",
        "## Stages",
        "",
        f"- ran: {_stage_list(outcomes['ran'])}",
        f"- restored from DVC's run-cache: {_stage_list(outcomes['restored'])}",
        f"- unchanged: {len(outcomes['unchanged'])} stages",
        "",
        f"## Params changed (`dvc params diff {base}`)",
        "",
        _dvc_md(["params", "diff", base], root),
        "",
        f"## Metrics changed (`dvc metrics diff {base}`)",
        "",
        _dvc_md(["metrics", "diff", base, "--precision", "4"], root),
        "",
        *gate.section(base, tolerances),
        "## Samples of the changed experiments",
        "",
    ]
    experiments = changed_experiments(rebuilt)
    out_dir.mkdir(parents=True, exist_ok=True)
    for exp in experiments:
        grid = root / "samples" / exp / "grid.png"
        if grid.exists():
            shutil.copyfile(grid, out_dir / f"{exp}-grid.png")
            lines += [f"### {exp}", "", f"![{exp} samples]({exp}-grid.png)", ""]
    if not experiments:
        lines += ["No experiment sampled again.", ""]
    report = "\n".join(lines)
    write_text(out_dir / "report.md", report)
    return report, not gate.failed


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="git revision to diff params and metrics against")
    parser.add_argument("--repro-log", type=Path, required=True, help="the output of `dvc repro`")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and the grids")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the DVC repository")
    parser.add_argument(
        "--tolerances", type=Path, default=TOLERANCES, help="the gate's tolerances, relative to --root"
    )
    args = parser.parse_args(argv)
    report, passed = retrain_report(
        args.root, args.base, args.repro_log.read_text(), args.out, args.tolerances
    )
    print(report)
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
