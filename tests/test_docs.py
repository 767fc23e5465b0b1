"""docs/bad-inputs.md names a test for every case: each test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CATALOGUE = TESTS.parent / "docs" / "bad-inputs.md"


def _named_tests(text: str) -> list[tuple[str, str]]:
    """(file, function) for every `file.py::function` and every `::function` that follows one in a cell."""
    found = []
    for cell in re.split(r"[|;]", text):
        current = None
        for match in re.finditer(r"(test_\w+\.py)?::(\w+)", cell):
            current = match.group(1) or current
            if current:
                found.append((current, match.group(2)))
    return found


def _functions(file: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(file.read_text())) if isinstance(node, ast.FunctionDef)}


def test_every_test_the_catalogue_names_exists():
    named = _named_tests(CATALOGUE.read_text())
    assert len(named) > 100
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not (TESTS / file).is_file() or name not in _functions(TESTS / file)
    ]
    assert not missing, missing
