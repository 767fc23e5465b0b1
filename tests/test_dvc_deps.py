"""dvc.yaml's code deps are the stages' import closures: each stage's `deps:` cover every gan_pipeline
module its script imports (else an edit there leaves its outputs stale while `dvc status` says up to date),
and name no package code that it does not import (else an edit there re-runs it for nothing)."""

from __future__ import annotations

import functools
import shlex
import shutil
from pathlib import Path, PurePosixPath

import pytest
from configs import enable_faces

from gan_pipeline.codedeps import covers, import_closure, uncovered

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = "src/gan_pipeline"


def _resolved_stages(folder: Path) -> dict[str, tuple[str, list[str]]]:
    """name (`train@cgan`) -> (cmd, deps as written) of every stage that DVC resolves dvc.yaml to."""
    from dvc.repo import Repo

    with Repo(str(folder)) as repo:
        return {s.name: (s.cmd, [d.def_path for d in s.deps]) for s in repo.index.stages}


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, tuple[str, list[str]]]:
    """Every stage of dvc.yaml, with params.yaml as it is and with faces enabled (their `foreach` stages
    exist only then)."""
    from dvc.repo import Repo

    faces = tmp_path_factory.mktemp("faces")
    shutil.copy(REPO / "dvc.yaml", faces / "dvc.yaml")
    (faces / "params.yaml").write_text(enable_faces((REPO / "params.yaml").read_text()))
    Repo.init(str(faces), no_scm=True)
    return {**_resolved_stages(faces), **_resolved_stages(REPO)}


@functools.cache
def closure(script: str) -> tuple[str, ...]:
    return tuple(import_closure(script, REPO))


def scripts(cmd: str) -> list[str]:
    """The Python files that a stage's command runs (`python stages/train.py ...`)."""
    return [token for token in shlex.split(cmd) if token.endswith(".py")]


def undeclared_code(name: str, cmd: str, deps: list[str]) -> list[str]:
    """One line per module that the stage's scripts import and its deps do not cover."""
    return [
        f"stage {name} imports {path} but its deps: do not cover it"
        for script in scripts(cmd)
        for path in uncovered(closure(script), deps)
    ]


def unused_code(name: str, cmd: str, deps: list[str]) -> list[str]:
    """One line per dep in the package's source that covers no module the stage's scripts import."""
    imported = [path for script in scripts(cmd) for path in closure(script)]
    return [
        f"stage {name} depends on {dep} but imports nothing in it"
        for dep in deps
        if PurePosixPath(PACKAGE_DIR) in PurePosixPath(dep).parents
        and not any(covers(dep, path) for path in imported)
    ]


def test_every_stage_runs_a_python_script(stages):
    assert stages
    assert [name for name, (cmd, _) in stages.items() if not scripts(cmd)] == []


def test_every_stage_declares_the_code_it_imports(stages):
    problems = [line for name, (cmd, deps) in stages.items() for line in undeclared_code(name, cmd, deps)]
    assert not problems, "\n".join(problems)


def test_no_stage_declares_code_it_does_not_import(stages):
    problems = [line for name, (cmd, deps) in stages.items() for line in unused_code(name, cmd, deps)]
    assert not problems, "\n".join(problems)


def test_a_stage_that_loses_the_dep_of_one_module_is_named_with_it(stages):
    """The evaluate stage's deps with models/classifier.py taken out (a folder dep that covered it replaced
    by the other modules it covered) fail the check, naming the stage and exactly that module."""
    name, (cmd, deps) = next((n, s) for n, s in stages.items() if "stages/evaluate.py" in scripts(s[0]))
    missing = f"{PACKAGE_DIR}/models/classifier.py"
    assert undeclared_code(name, cmd, deps) == []
    dropped = [dep for dep in deps if covers(dep, missing)]
    kept = [dep for dep in deps if dep not in dropped]
    others = [p for p in closure("stages/evaluate.py") if p != missing and uncovered([p], kept)]
    assert undeclared_code(name, cmd, kept + others) == [
        f"stage {name} imports {missing} but its deps: do not cover it"
    ]
