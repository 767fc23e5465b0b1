"""The static import closure: every gan_pipeline module a file can import, lazy and relative imports and
the packages on the way included; DVC deps cover a file by its path or a folder above it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gan_pipeline.codedeps import covers, import_closure, uncovered


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


PACKAGE = {
    "src/gan_pipeline/__init__.py": "",
    "src/gan_pipeline/errors.py": "import os\n",
    "src/gan_pipeline/io.py": "from gan_pipeline.errors import DataError\n",
    "src/gan_pipeline/a/__init__.py": "from .b import f\n",
    "src/gan_pipeline/a/b.py": "from ..errors import x\nfrom . import c\n",
    "src/gan_pipeline/a/c.py": "import torch\n",
    "src/gan_pipeline/a/unused.py": "",
    "src/gan_pipeline/lazy.py": "def f():\n    import gan_pipeline.io as io\n    return io\n",
    "src/gan_pipeline/typed.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gan_pipeline.a import b\n"
        "else:\n    from gan_pipeline import errors\n"
    ),
}


def closure_of(tmp_path: Path, script: str) -> list[str]:
    """The closure of a script `s.py` with text `script`, beside the package above, without its `src/`."""
    write_tree(tmp_path, {**PACKAGE, "s.py": script})
    return sorted(path.removeprefix("src/gan_pipeline/") for path in import_closure("s.py", tmp_path))


def test_a_lazy_import_counts_with_the_package_inits_on_the_way_and_the_relative_imports(tmp_path):
    closure = closure_of(tmp_path, "def main():\n    from gan_pipeline.a.b import g\n")
    assert closure == ["__init__.py", "a/__init__.py", "a/b.py", "a/c.py", "errors.py", "s.py"]


def test_an_import_under_type_checking_does_not_count_and_its_else_does(tmp_path):
    closure = closure_of(tmp_path, "import gan_pipeline.lazy\nimport gan_pipeline.typed\n")
    assert closure == ["__init__.py", "errors.py", "io.py", "lazy.py", "s.py", "typed.py"]


def test_from_the_package_import_a_submodule_or_a_name(tmp_path):
    closure = closure_of(tmp_path, "from gan_pipeline import io, VERSION\n")
    assert closure == ["__init__.py", "errors.py", "io.py", "s.py"]


def test_a_package_module_is_found_from_any_source_folder(tmp_path):
    write_tree(tmp_path, PACKAGE)
    closure = import_closure(tmp_path / "src/gan_pipeline/io.py", tmp_path / "src", source=".")
    assert closure == ["gan_pipeline/__init__.py", "gan_pipeline/errors.py", "gan_pipeline/io.py"]


def test_an_import_of_a_missing_module_names_the_file_and_line(tmp_path):
    write_tree(tmp_path, {**PACKAGE, "s.py": "import os\nfrom gan_pipeline.a.gone import f\n"})
    with pytest.raises(ModuleNotFoundError, match=r"s\.py:2: imports gan_pipeline\.a\.gone, which is not in"):
        import_closure("s.py", tmp_path)


def test_a_dep_covers_its_own_path_and_what_its_folder_holds():
    assert covers("src/gan_pipeline/io.py", "src/gan_pipeline/io.py")
    assert covers("src/gan_pipeline/models", "src/gan_pipeline/models/dcgan.py")
    assert covers("src/gan_pipeline/models/", "src/gan_pipeline/models/dcgan.py")
    assert not covers("src/gan_pipeline/models", "src/gan_pipeline/models_old.py")
    assert not covers("src/gan_pipeline/models/dcgan.py", "src/gan_pipeline/models")
    assert uncovered(["a/x.py", "b.py", "a/y/z.py"], ["a", "c.py"]) == ["b.py"]
