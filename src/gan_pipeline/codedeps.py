"""The code a Python file runs: the file and every gan_pipeline module it imports, found by reading the
source (no import is executed), so that a DVC stage's `deps:` and the training code's fingerprint come
from the imports themselves instead of lists kept by hand."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

PACKAGE = "gan_pipeline"


def import_closure(file: str | Path, root: str | Path, source: str = "src") -> list[str]:
    """`file` and every module of the gan_pipeline package (in `root`/`source`) that it imports, transitively,
    as POSIX paths relative to `root`, sorted.

    Counted: `import` and `from ... import` statements anywhere (inside functions too, where the stages and
    the package import lazily), relative imports, `from package import submodule`, and the `__init__.py` of
    every package on the way (importing gan_pipeline.a.b runs gan_pipeline/__init__.py and
    gan_pipeline/a/__init__.py). Imports under `if TYPE_CHECKING:` never run and are not counted, nor are
    modules that code finds by name at run time (`importlib.import_module`).
    ModuleNotFoundError names the file and line of an import of a gan_pipeline module that does not exist.
    """
    root = Path(root).resolve()
    return sorted(
        path.relative_to(root).as_posix() for path in _closure((root / file).resolve(), root / source)
    )


def covers(dep: str, path: str) -> bool:
    """Whether DVC dep `dep` covers the repo-relative `path`: the same path, or a folder that contains it."""
    dep_path, file = PurePosixPath(dep), PurePosixPath(path)
    return dep_path == file or dep_path in file.parents


def uncovered(paths: Iterable[str], deps: Iterable[str]) -> list[str]:
    """The paths (repo-relative) that none of `deps` covers, in the order given."""
    deps = list(deps)
    return [path for path in paths if not any(covers(dep, path) for dep in deps)]


def _closure(file: Path, source_root: Path) -> set[Path]:
    seen, todo = set(), [file]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_module_files(current, source_root))
    return seen


def _module_files(file: Path, source_root: Path) -> Iterator[Path]:
    """The files of the gan_pipeline modules (and their packages) that `file` imports directly."""
    for name, names, line in _imports(file, _package_of(file, source_root)):
        found = _files_of(name, source_root)
        if found is None:
            raise ModuleNotFoundError(f"{file}:{line}: imports {name}, which is not in {source_root}")
        yield from found
        for sub in names:  # `from package import x`: x is a submodule or a name defined in the package
            yield from _files_of(f"{name}.{sub}", source_root) or ()


def _imports(file: Path, package: str | None) -> Iterator[tuple[str, list[str], int]]:
    """(absolute module, names imported from it, line) for each import statement in `file` that can run."""
    for node in _runnable_nodes(ast.parse(file.read_bytes(), str(file))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level and package is None:
                raise ImportError(f"{file}:{node.lineno}: a relative import outside the {PACKAGE} package")
            yield _absolute(node, package), [a.name for a in node.names if a.name != "*"], node.lineno


def _runnable_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks (their `else:` is kept)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, package: str | None) -> str:
    """The absolute module name of a `from ... import` (relative ones resolved against `package`)."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _package_of(file: Path, source_root: Path) -> str | None:
    """The dotted package that relative imports in `file` start from; None for a file outside the package."""
    try:
        parts = file.relative_to(source_root).parts
    except ValueError:
        return None
    return ".".join(parts[:-1]) if parts[0] == PACKAGE else None


def _files_of(name: str, source_root: Path) -> tuple[Path, ...] | None:
    """The files that importing module `name` runs (each package's `__init__.py`, then the module);
    () for a module outside gan_pipeline, None for a gan_pipeline module that does not exist."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return ()
    files, folder = [], source_root
    for i, part in enumerate(parts):
        folder = folder / part
        if (folder / "__init__.py").is_file():
            files.append(folder / "__init__.py")
        elif i == len(parts) - 1 and folder.with_suffix(".py").is_file():
            files.append(folder.with_suffix(".py"))
        elif not folder.is_dir():  # a folder without __init__.py is a namespace package: nothing runs
            return None
    return tuple(files)
