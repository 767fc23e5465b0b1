"""The stage scripts as users meet them: --help explains, bad input is one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "classifier", "reference", "train", "sample", "evaluate"]


def stage(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "GAN_PIPELINE_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("name", STAGES)
def test_help_explains_the_stage(name):
    proc = stage(name, "--help")
    assert proc.returncode == 0
    assert f"{name}:" in proc.stdout and "--params" in proc.stdout


def _params(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def prepare_into(folder: Path, params: Path) -> subprocess.CompletedProcess:
    """Run the prepare stage with `params`, writing o.h5 and s.json into `folder`."""
    return stage(
        "prepare", "--params", str(params), "--out", str(folder / "o.h5"), "--stats", str(folder / "s.json")
    )


def test_a_bad_param_is_one_line_naming_the_key(tmp_path):
    params = _params(tmp_path, lambda p: p["data"].update(test_fraction=2))
    proc = prepare_into(tmp_path, params)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {params}: data.test_fraction: expected a float in (0, 1), got 2"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_missing_raw_file_leaves_earlier_outputs_intact(tmp_path):
    params = _params(tmp_path, lambda p: p["data"].update(source="csv", path=str(tmp_path / "missing.csv")))
    (tmp_path / "o.h5").write_bytes(b"earlier")
    proc = prepare_into(tmp_path, params)
    assert proc.returncode == 1
    assert "missing.csv" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / "o.h5").read_bytes() == b"earlier"
    assert not (tmp_path / "s.json").exists()


def train_into(folder: Path, experiment: str, data: Path, params: Path = REPO / "params.yaml"):
    """Run the train stage for `experiment` on `data`, writing into folder/m."""
    return stage(
        "train", "--params", str(params), "--experiment", experiment, "--data", str(data),
        "--stats", str(folder / "stats.json"), "--out", str(folder / "m"), "--log", str(folder / "l.csv"),
        "--classifier", str(folder / "c.safetensors"), "--eval-log", str(folder / "e.csv"),
    )  # fmt: skip


def test_train_refuses_an_unknown_experiment_and_missing_data(tmp_path):
    proc = train_into(tmp_path, "gan9", tmp_path / "x.h5")
    assert proc.returncode == 1
    assert "experiments.gan9: no such experiment" in proc.stderr
    proc = train_into(tmp_path, "cgan", tmp_path / "x.h5")
    assert proc.returncode == 1
    assert "x.h5: prepared data not found" in proc.stderr


def test_a_batch_larger_than_the_dataset_is_a_params_error(tmp_path):
    prepared = tmp_path / "mnist.h5"
    assert stage("prepare", "--out", str(prepared), "--stats", str(tmp_path / "stats.json")).returncode == 0
    params = _params(tmp_path, lambda p: p["experiments"]["cgan"]["train"].update(batch_size=5000))
    proc = train_into(tmp_path, "cgan", prepared, params)
    assert proc.returncode == 1
    assert (
        "experiments.cgan.train.batch_size: expected at most the 4000 training images, got 5000"
        in proc.stderr
    )
    assert not (tmp_path / "m").exists()


def test_the_collapse_alarm_needs_the_classifier(tmp_path):
    proc = stage(
        "train", "--experiment", "cgan", "--data", str(tmp_path / "x.h5"),
        "--stats", str(tmp_path / "s.json"), "--out", str(tmp_path / "m"), "--log", str(tmp_path / "l.csv"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "experiments.cgan.monitor.eval_every: the mode-collapse alarm needs --classifier" in proc.stderr
