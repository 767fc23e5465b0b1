"""Helpers for the tests that run the real pipeline (`dvc repro`, `dvc exp`, `dvc push/pull`) in a temporary
git repo: a copy of this project with tiny params, reproduced once per test session and copied for each
test module that changes it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from gan_pipeline.reports.retrain import stages_by_outcome

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("mlp_gan", "cgan", "dcgan28")
TINY = {
    "classifier": {"epochs": 1, "batch_size": 128},
    "sample": {"n_samples": 200},
    "train": {"epochs": 1, "batch_size": 256, "log_every": 5},
    "monitor": {"eval_every": 1, "n_samples": 100},
    "evaluate": {"inception_n": 20},
    "runtime": {"threads": 1},  # tiny models: one thread is faster, and parallel stages don't fight
}
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def experiment_stages(*experiments: str) -> set[str]:
    """The per-experiment stages of `experiments` (train, sample, evaluate)."""
    return {f"{stage}@{exp}" for stage in ("train", "sample", "evaluate") for exp in experiments}


# `check` runs before everything, and again whenever params.yaml changes (it reads all of it).
ALL_STAGES = {"check", "prepare@mnist", "classifier", "reference", "report"} | experiment_stages(*EXPERIMENTS)


def tool_env(extra: dict | None = None) -> dict[str, str]:
    """The environment for the project's tools (dvc, mlflow, python of this venv), no tracking URI."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GAN_PIPELINE_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",  # tiny models: one thread is faster, and parallel stages don't fight
        **(extra or {}),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run(
    cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(env), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def shrink(params: dict) -> None:
    """The TINY sizes, each written where params.yaml writes that key: in train_defaults or
    monitor_defaults, and in every experiment that sets its own (epochs; dcgan28's eval_every)."""
    params["classifier"].update(TINY["classifier"])
    params["sample"].update(TINY["sample"])
    params["evaluate"].update(TINY["evaluate"])
    params["runtime"].update(TINY["runtime"])
    for section in ("train", "monitor"):
        homes = [params[f"{section}_defaults"]] + [
            exp.get(section) or {} for exp in params["experiments"].values()
        ]
        for key, value in TINY[section].items():
            assert any(key in home for home in homes), f"{section}.{key} is in no section of params.yaml"
            for home in homes:
                if key in home:
                    home[key] = value


def ran_stages(output: str) -> set[str]:
    """The stages that `dvc repro` / `dvc exp run` actually executed, from its output."""
    return set(stages_by_outcome(output)["ran"])


def commit(repo: Path, message: str) -> None:
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-qm", message], repo)


def copy_project(dest: Path) -> Path:
    """This project's tracked and untracked-unignored files (no committed outputs, no dvc.lock) as a fresh
    git repo at `dest` on branch main, with tiny params, committed."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(("metrics/", "plots/")) and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    set_params(dest, shrink)
    run(["git", "init", "-q", "-b", "main"], dest)
    commit(dest, "baseline")
    return dest


def clone_reproduced(source: Path, dest: Path) -> Path:
    """A copy of a reproduced project (git history, DVC cache, outputs, mlflow.db) that a test may change.

    The copied MLflow experiment keeps its artifact location in `source`'s `mlartifacts`."""

    def dvc_tmp(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder).name == ".dvc" else []  # locks, queue state, DVC's hash cache

    shutil.copytree(source, dest, symlinks=True, ignore=dvc_tmp, dirs_exist_ok=True)
    return dest


def help_imports(argv0: str, run: str, modules: tuple[str, ...]) -> subprocess.CompletedProcess:
    """A fresh interpreter that answers `--help` by `run` (e.g. `runpy.run_path(sys.argv[0],
    run_name='__main__')`, with sys.argv [argv0, '--help']) and prints, as its last line, which of `modules`
    that imported."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{argv0!r}, '--help']\n"
        "try:\n"
        f"    {run}\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {modules!r} if m in sys.modules))\n"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 120):
    """`mlflow <args> --host 127.0.0.1 --port <free>` (ui or server) running until the block ends; yields its
    URL once it answers /health."""
    port = free_port()
    log = open(cwd / f"mlflow-{port}.log", "w")
    cmd = ["mlflow", *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=tool_env(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{' '.join(cmd)} did not start:\n{(cwd / log.name).read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its workers too)
        proc.wait(timeout=30)
        log.close()
