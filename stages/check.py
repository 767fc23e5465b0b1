"""check: the checks that need no stage to run, made before any stage runs. Every other stage depends on this
one's output, so `dvc repro` and `dvc exp run` run it first and stop here, before DVC removes or replaces any
stage's outputs: params.yaml's schema and cross-field checks (experiment and dataset names included: DVC
builds the stage commands from them), each dataset's raw source, the Inception weights file, and the MLflow
store answering.

Its output holds the names of the checks only, so it is the same file after every passing run and a param
change re-runs only the stages that read that param."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This checkout's own package first: the editable install points at the workspace's src/, which a
# `dvc exp run --temp/--queue` copy must not run (README, "Sweeps with the DVC queue").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gan_pipeline.cli import run_stage
from gan_pipeline.errors import exit_on_error

CHECKS = ["params", "sources", "Inception weights file", "tracking store"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="params file to check")
    p.add_argument("--out", type=Path, required=True, help="JSON stamp to write when every check passes")
    return p


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from gan_pipeline.checks import check_all
    from gan_pipeline.io import write_json

    check_all(args.params)
    write_json(args.out, {"checked": args.params, "checks": CHECKS})
    print(f"{args.params}: every check passed ({', '.join(CHECKS)})")


if __name__ == "__main__":
    run_stage(main)
