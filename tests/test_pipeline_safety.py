"""What `dvc repro` and `dvc exp run` themselves do when something is wrong (not the stage scripts run by
hand): a bad param or name stops the pipeline in the `check` stage before DVC removes any output, a name
never becomes shell code, and a stage that fails mid-run leaves the previous outputs and dvc.lock in place."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import clone_reproduced, ran_stages, run, set_params

OUTPUT_DIRS = ("models", "samples", "metrics", "plots", "data/prepared", "data/reference", "reports")


def output_md5s(repo: Path) -> dict[str, str]:
    """md5 of every output file of the pipeline in `repo`."""
    return {
        str(path.relative_to(repo)): hashlib.md5(path.read_bytes()).hexdigest()
        for folder in OUTPUT_DIRS
        for path in sorted((repo / folder).rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


@pytest.fixture(scope="module")
def repo(reproduced_project, tmp_path_factory) -> Path:
    source, _ = reproduced_project
    return clone_reproduced(source, tmp_path_factory.mktemp("safety"))


@pytest.fixture
def pristine(repo):
    """The repo's outputs before a test, and the repo put back to its committed params afterwards."""
    before = output_md5s(repo)
    yield before
    # a passing `check` records the params it checked in dvc.lock; nothing else there may change
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo)


def test_a_bad_param_stops_dvc_repro_in_check_before_any_output_is_removed(repo, pristine):
    set_params(repo, lambda p: p["experiments"]["cgan"]["train"].update(lr="fast"))
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: experiments.cgan.train.lr: expected a float" in proc.stderr
    assert ran_stages(proc.stdout) == {"check"}
    assert output_md5s(repo) == pristine


def test_a_bad_param_stops_dvc_exp_run_in_check(repo, pristine):
    proc = run(["dvc", "exp", "run", "-S", "experiments.cgan.train.lr=-1"], repo, check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: experiments.cgan.train.lr: expected a float > 0, got -1" in proc.stderr
    assert ran_stages(proc.stdout) == {"check"}
    assert output_md5s(repo) == pristine


def test_an_experiment_name_is_never_run_as_shell_code(repo, pristine):
    marker = repo / "pwned"

    def inject(p):
        p["experiments"][f"x$(touch {marker})"] = p["experiments"]["cgan"]

    set_params(repo, inject)
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    assert not marker.exists()
    assert "error: params.yaml: experiments: expected names matching" in proc.stderr, proc.stderr
    assert "got 'x$(touch" in proc.stderr
    assert output_md5s(repo) == pristine


def test_a_stage_that_fails_mid_run_leaves_the_previous_outputs_and_lock(repo, pristine):
    # Weights drawn from N(0, 1e30) overflow float32 in the first forward pass: the loss is NaN at step 1,
    # and train@mlp_gan fails after DVC would have removed its outputs, had they not been persisted.
    lock_before = _lock(repo)["stages"]["train@mlp_gan"]
    overflow = "experiments.mlp_gan.train.init_std=1e30"
    proc = run(["dvc", "exp", "run", "-S", overflow, "train@mlp_gan"], repo, check=False)
    assert proc.returncode != 0
    assert "error: training diverged at step 1: loss_d is nan" in proc.stderr, proc.stderr
    assert "[train@mlp_gan: the previous outputs stay; `dvc checkout train@mlp_gan` restores" in proc.stderr
    assert "train@mlp_gan" in ran_stages(proc.stdout)
    assert _lock(repo)["stages"]["train@mlp_gan"] == lock_before
    after = output_md5s(repo)
    changed = {name for name in pristine if after.get(name) != pristine[name]}
    # The checkpoint is the one output a failing run may have replaced (it is written while training);
    # dvc.lock still names the previous one, which `dvc checkout` puts back.
    assert changed <= {"models/mlp_gan/checkpoint.safetensors"}, changed
    run(["dvc", "checkout", "train@mlp_gan"], repo)
    assert output_md5s(repo) == pristine


def _lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())
