"""What ties an MLflow run to the code, data and environment that made it: the git commit, the DVC experiment,
the md5s that dvc.lock records, and the torch build, CPU kernels, threads and device. No MLflow here, so
that these can be read and tested without a tracking store; torch loads only when `environment` is asked."""

from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_lock_hashes(root: Path, paths: list[str]) -> dict[str, str]:
    """The md5 that dvc.lock records for each of `paths` (as some stage's output), where it has one."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") in paths and "md5" in out:
                found[out["path"]] = out["md5"]
    return found


def file_md5(path: str | Path) -> str:
    """The md5 of a file's bytes: what DVC records for a file output."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_name(root: Path, experiment: str) -> str:
    """A run's name: the experiment key and the DVC experiment under `dvc exp run` (DVC_EXP_NAME), else the
    git commit's first 7 digits, e.g. `dcgan28-a1b2c3d`."""
    return f"{experiment}-{os.environ.get('DVC_EXP_NAME') or git_commit(root)[:7]}"


def run_tags(root: Path, data_paths: list[str], data_content_hash: str, source: str) -> dict[str, str]:
    """Tags that tie a run to its code and data version: git commit, DVC experiment, data hashes, and the
    stage script that made it (`source`, e.g. stages/train.py) and who ran it."""
    tags = {
        "mlflow.source.git.commit": git_commit(root),
        "mlflow.source.name": source,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
        "data_content_hash": data_content_hash,
    }
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    for path, md5 in dvc_lock_hashes(root, data_paths).items():
        tags[f"dvc_md5:{path}"] = md5
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a container's arbitrary uid)
        return "unknown"


def environment() -> dict[str, str | int]:
    """What a stage's numbers depend on beyond params, data and code: the torch build, the CPU (its vendor,
    the instruction set torch's kernels use and its bf16 matrix unit: oneDNN picks other kernels for each,
    whose float sums differ in the last bits, as an Intel CPU with AMX and an AMD Zen 4 do at AVX-512 fp32),
    torch's thread count and the device that `runtime.device()` picks (cpu or cuda)."""
    import torch

    from gan_pipeline.runtime import device

    return {
        "torch": torch.__version__,
        "cpu_vendor": _cpu_vendor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": "amx" if torch.cpu._is_amx_tile_supported()
        else "avx512_bf16" if torch.cpu._is_avx512_bf16_supported() else "none",
        "threads": torch.get_num_threads(),
        "device": device().type,
    }  # fmt: skip


def _cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD), or platform.machine() where there is none."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def without_timings(info: dict[str, Any]) -> dict[str, Any]:
    """An info file's content less its timings (keys ending `_seconds` or `_per_s`): info files are kept in
    git, and a fresh clone's `make repro` must leave them as they are; the stage prints its timings and the
    train stage's run.json and MLflow runs keep them."""
    return {k: v for k, v in info.items() if not k.endswith(("_seconds", "_per_s"))}
