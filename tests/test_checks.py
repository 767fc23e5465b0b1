"""The check stage's checks: params, raw sources, the Inception weights file and the MLflow store, each a
one-line error, and none of them loading torch or MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gan_pipeline.checks import check_all
from gan_pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A folder with the repository's params.yaml and a dvc.yaml, as the check stage's working directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


def _edit(repo: Path, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _error(repo: Path) -> str:
    with pytest.raises(PipelineError) as err:
        check_all(repo / "params.yaml")
    return str(err.value)


def test_the_repository_params_pass_and_nothing_is_written(repo):
    check_all(repo / "params.yaml")
    assert sorted(p.name for p in repo.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_a_missing_raw_source_is_named(repo):
    _edit(repo, lambda p: p["datasets"]["mnist"].update(source="csv", path="data/raw/none.csv"))
    assert "data/raw/none.csv" in _error(repo)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "missing.pth: Inception weights file not found (evaluate.inception_weights)"),
        (b"weights as text\n", "w.pth: not a torch state dict of Inception weights"),
    ],
)
def test_an_inception_weights_file_that_torch_did_not_write_is_refused(repo, content, expected):
    name = "missing.pth" if content is None else "w.pth"
    if content is not None:
        (repo / name).write_bytes(content)
    _edit(repo, lambda p: p["evaluate"].update(inception_weights=name))
    assert _error(repo).startswith(expected)


def test_a_corrupt_mlflow_store_is_named(repo):
    (repo / "mlflow.db").write_bytes(b"not sqlite" * 100)
    assert _error(repo).startswith(f"{repo}/mlflow.db: not a readable MLflow database")


def test_the_checks_load_neither_torch_nor_mlflow(repo):
    code = (
        "import sys; from gan_pipeline.checks import check_all; check_all('params.yaml');"
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_with_faces_on_a_reference_of_another_size_and_a_missing_identity_file_stop_the_check(
    repo, enable_faces, face_arrays, write_face_jpegs
):
    """The documented face blocks, their raw faces here: a reference that cannot score its experiment is a
    params error naming both keys; then the identity file is read before any image is decoded."""
    write_face_jpegs(repo / "raw", face_arrays[:4])
    (repo / "params.yaml").write_text(enable_faces((repo / "params.yaml").read_text()))

    def faces_here(p):
        for name in ("celeba64", "celeba128"):
            p["datasets"][name].update(path=str(repo / "raw"), split="seeded", identity_file="id.txt")
        p["references"]["dcgan64"] = "celeba128"

    _edit(repo, faces_here)
    assert _error(repo) == (
        f"{repo / 'params.yaml'}: references.dcgan64: expected a face dataset of image_size 64 like "
        "experiments.dcgan64.data ('celeba64': its samples are scored against the reference's test faces), "
        "got 'celeba128' (image_size 128)"
    )
    _edit(repo, lambda p: p["references"].update(dcgan64="celeba64"))
    assert _error(repo) == "id.txt: cannot read the identity file (No such file or directory)"
    (repo / "id.txt").write_text("".join(f"{i + 1:06d}.jpg {i % 2}\n" for i in range(4)))
    check_all(repo / "params.yaml")
