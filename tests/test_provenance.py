"""Provenance: the git commit, DVC experiment and dvc.lock md5s that tie a run to its code and data, read
without MLflow, and the environment that stages record."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from gan_pipeline import provenance


def test_dvc_lock_hashes_reads_stage_outputs(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: x\n    outs:\n"
        "    - path: data/prepared/mnist.h5\n      md5: abc123\n      size: 10\n"
    )
    assert provenance.dvc_lock_hashes(tmp_path, ["data/prepared/mnist.h5", "other"]) == {
        "data/prepared/mnist.h5": "abc123"
    }
    assert provenance.dvc_lock_hashes(tmp_path / "no-lock", ["data/prepared/mnist.h5"]) == {}


def test_file_md5_is_the_md5_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000  # more than one read block
    (tmp_path / "f").write_bytes(data)
    assert provenance.file_md5(tmp_path / "f") == hashlib.md5(data).hexdigest()


def test_run_tags_name_the_commit_the_dvc_experiment_and_the_data(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        cwd=tmp_path,
        check=True,
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True)
    (tmp_path / "dvc.lock").write_text(
        "stages:\n  prepare:\n    outs:\n    - path: data/prepared/mnist.h5\n      md5: abc123\n"
    )
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    monkeypatch.setenv("USER", "ada")
    monkeypatch.setenv("LOGNAME", "ada")
    assert provenance.run_tags(tmp_path, ["data/prepared/mnist.h5"], "h", "stages/train.py") == {
        "mlflow.source.git.commit": head.stdout.strip(),
        "mlflow.source.name": "stages/train.py",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": "ada",
        "data_content_hash": "h",
        "dvc_exp_name": "lr-sweep-1",
        "dvc_md5:data/prepared/mnist.h5": "abc123",
    }
    assert provenance.git_commit(tmp_path / "not-a-repo") == "unknown"
    assert provenance.run_name(tmp_path, "cgan") == "cgan-lr-sweep-1"  # under dvc exp run
    monkeypatch.delenv("DVC_EXP_NAME")
    assert provenance.run_name(tmp_path, "cgan") == f"cgan-{head.stdout.strip()[:7]}"


def test_provenance_does_not_import_mlflow():
    code = "import sys, gan_pipeline.provenance; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_environment_names_torch_the_cpu_kernels_threads_and_device(monkeypatch):
    import torch

    monkeypatch.setenv("GAN_PIPELINE_DEVICE", "cpu")
    torch.set_num_threads(1)  # as the autouse fixture leaves it; set here so that the test says it
    env = provenance.environment()
    assert env == {
        "torch": torch.__version__,
        "cpu_vendor": env["cpu_vendor"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": env["cpu_bf16"],
        "threads": 1,
        "device": "cpu",
    }
    with open("/proc/cpuinfo") as f:  # the vendor as the kernel reports it (GenuineIntel, AuthenticAMD)
        vendors = {line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")}
    assert env["cpu_vendor"] in vendors
    flags = open("/proc/cpuinfo").read().split()
    expected = "amx" if "amx_tile" in flags else "avx512_bf16" if "avx512_bf16" in flags else "none"
    assert env["cpu_bf16"] == expected
