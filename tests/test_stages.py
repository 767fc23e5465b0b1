"""The stage scripts as users meet them: --help explains, bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "classifier", "train", "sample", "evaluate", "evaluate_faces"]


def stage(name: str, *args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GAN_PIPELINE_PROGRESS": "0", **(env or {})}
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


def test_the_face_stages_prepare_train_sample_and_evaluate(
    tmp_path, face_arrays, write_face_jpegs, enable_faces
):
    """The stage commands that dvc.yaml runs for a face experiment, on 12 generated faces at 64x64."""
    write_face_jpegs(tmp_path / "raw", face_arrays)
    raw = yaml.safe_load(enable_faces((REPO / "params.yaml").read_text()))
    raw["faces"]["celeba64"].update(path=str(tmp_path / "raw"), split="seeded", test_fraction=0.25)
    raw["face_experiments"]["dcgan64"]["train"].update(epochs=1, batch_size=4)
    raw["sample"]["n_samples"] = 70
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    data, stats, model = tmp_path / "celeba64.h5", tmp_path / "celeba64.stats.json", tmp_path / "m"

    def ok(name: str, *args: str) -> None:
        proc = stage(name, "--params", str(params), *args, env=env)
        assert proc.returncode == 0, proc.stderr

    ok("prepare", "--faces", "celeba64", "--out", str(data), "--stats", str(stats))
    ok("train", "--experiment", "dcgan64", "--data", str(data), "--stats", str(stats), "--out", str(model),
       "--log", str(tmp_path / "log.csv"))  # fmt: skip
    assert json.loads((model / "run.json").read_text())["steps"] == 2  # 9 train faces // 4
    ok(
        "sample",
        "--model",
        str(model),
        "--grid",
        str(tmp_path / "grid.png"),
        "--samples",
        str(tmp_path / "s.npz"),
    )
    with np.load(tmp_path / "s.npz") as npz:
        assert npz["images"].shape == (70, 64, 64, 3) and npz["images"].dtype == np.uint8
    assert Image.open(tmp_path / "grid.png").size == ((8 * 66 + 2) * 2,) * 2  # 8x8 faces
    ok("evaluate_faces", "--data", str(data), "--samples", str(tmp_path / "s.npz"),
       "--run", str(model / "run.json"), "--metrics", str(tmp_path / "metrics.json"))  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fid_inception"] is None and metrics["n_real"] == 3 and metrics["n_fake"] == 70


def test_prepare_names_an_unknown_face_dataset(tmp_path):
    proc = stage(
        "prepare", "--faces", "celeba", "--out", str(tmp_path / "o.h5"), "--stats", str(tmp_path / "s.json")
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: params.yaml: faces.celeba: no such face dataset (have: none)"


def _dvc_stages(folder: Path) -> dict:
    """name -> (cmd, deps) of every stage dvc.yaml resolves to in `folder`."""
    from dvc.repo import Repo

    Repo.init(str(folder), no_scm=True)
    with Repo(str(folder)) as repo:
        return {s.name: (s.cmd, {d.def_path for d in s.deps}) for s in repo.index.stages}


def test_faces_add_no_dvc_stages_until_enabled_and_then_read_their_own_data(tmp_path, enable_faces):
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    for folder in ("off", "on"):
        shutil.copy(REPO / "dvc.yaml", tmp_path / folder / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "off" / "params.yaml")
    (tmp_path / "on" / "params.yaml").write_text(enable_faces((REPO / "params.yaml").read_text()))
    off, on = _dvc_stages(tmp_path / "off"), _dvc_stages(tmp_path / "on")
    assert not any("faces" in name for name in off)
    assert set(on) - set(off) == {"prepare_faces@celeba64", "prepare_faces@celeba128"} | {
        f"{s}_faces@{e}" for s in ("train", "sample", "evaluate") for e in ("dcgan64", "convgan128")
    }
    assert {n: on[n] for n in off} == off  # the MNIST stages are unchanged
    cmd, deps = on["train_faces@convgan128"]
    assert "--data data/prepared/celeba128.h5" in cmd and "data/prepared/celeba128.h5" in deps
    assert "data/raw/celeba/img_align_celeba" in on["prepare_faces@celeba64"][1]
