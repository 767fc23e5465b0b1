"""The Markdown report of a CI retrain (scripts/retrain_report.sh): which stages ran, `dvc params diff` and
`dvc metrics diff` against the base revision, and the sample grids of the experiments that changed.

    python -m gan_pipeline.reports.retrain --base main --repro-log repro.log --out reports/retrain
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from gan_pipeline.errors import PipelineError, exit_on_error
from gan_pipeline.io import write_text

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


def changed_experiments(stages: Iterable[str]) -> list[str]:
    """Experiments whose samples were (re)made: those with a `train@` or `sample@` stage among `stages`."""
    found = []
    for stage in stages:
        kind, _, exp = stage.partition("@")
        if kind in ("train", "sample") and exp and exp not in found:
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


def retrain_report(root: Path, base: str, repro_output: str, out_dir: Path) -> str:
    """Write `<out_dir>/report.md` (and `<out_dir>/<exp>-grid.png` for each changed experiment); return it.

    Grids are linked relative to the report, so the folder is a self-contained CI artifact."""
    outcomes = stages_by_outcome(repro_output)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    lines = [
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
        "## Samples of the changed experiments",
        "",
    ]
    experiments = changed_experiments(outcomes["ran"] + outcomes["restored"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for exp in experiments:
        grid = root / "samples" / exp / "grid.png"
        if grid.exists():
            shutil.copyfile(grid, out_dir / f"{exp}-grid.png")
            lines += [f"### {exp}", "", f"![{exp} samples]({exp}-grid.png)", ""]
    if not experiments:
        lines += ["No experiment retrained.", ""]
    report = "\n".join(lines)
    write_text(out_dir / "report.md", report)
    return report


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="git revision to diff params and metrics against")
    parser.add_argument("--repro-log", type=Path, required=True, help="the output of `dvc repro`")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and the grids")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the DVC repository")
    args = parser.parse_args(argv)
    print(retrain_report(args.root, args.base, args.repro_log.read_text(), args.out))


if __name__ == "__main__":
    main()
