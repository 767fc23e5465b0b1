#!/usr/bin/env bash
# CI's retrain job (.github/workflows/retrain.yml), runnable locally: pull what the default DVC remote has,
# reproduce what changed, push the new outputs, and write a Markdown report to REPORT_DIR/report.md:
# the gate's verdict on its first line (PASS, or FAIL when a retrained experiment's metrics are worse than
# BASE's by more than benchmarks/tolerances.json allows), the stages that ran, `dvc params diff` and
# `dvc metrics diff` against BASE, the changed experiments' sample grids. Exits 1 on FAIL, after the push
# and the report, so that both are there to look at. Expects `dvc` and the package on PATH (the README's
# setup).
# Usage: scripts/retrain_report.sh [BASE] [REPORT_DIR]     (defaults: origin/main, reports/retrain)
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-origin/main}
out=${2:-reports/retrain}
mkdir -p "$out"

remote=$(dvc remote default 2>/dev/null || true)
if [ -n "$remote" ]; then
    # Whatever the remote lacks (a new clone's first run, a fresh local remote), dvc repro rebuilds.
    dvc pull --allow-missing || echo "note: dvc pull from remote '$remote' failed; dvc repro rebuilds what is missing" >&2
fi
dvc repro 2>&1 | tee "$out/repro.log"
if [ -n "$remote" ]; then
    dvc push
fi
python -m gan_pipeline.reports.retrain --base "$base" --repro-log "$out/repro.log" --out "$out"
