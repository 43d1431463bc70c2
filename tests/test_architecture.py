"""The layout shows the architecture: what lives at the package root, file sizes, import layers.

Layers, lowest first (as README's Layout states them):

    errors, files < models < data < training < reliability < runs < cli < ablate < testing, explore

A package may import from its own layer and those below it, never above. Imports inside
functions count too: a lazy import upward is still a dependency upward. Importing
``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so a module of a lower package that
imports any module of a higher one also imports everything that package's ``__init__`` does:
that is how ``reliability.checkpoint_io -> runs.files`` (``runs`` re-exports ``identity``,
which imports ``reliability``) made a cycle that failed in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "convrepro"
MAX_LINES = 400

# config -> CLI -> DataModule + ImageClassifier(backbone) -> Trainer -> run folder + W&B -> ablation
LAYERS = {
    "errors": 0,
    "files": 0,
    "models": 1,
    "data": 2,
    "training": 3,
    "reliability": 4,
    "runs": 5,
    "cli": 6,
    "testing": 8,
    "ablate": 7,
    "explore": 8,
}
# The bottom layer, at the package root so that using them imports no package's __init__: they
# depend on the standard library (and convrepro.errors) only.
LEAF_MODULES = {"convrepro.errors", "convrepro.files"}
ROOT_MODULES = {"__init__.py", "__main__.py", "cli.py", "errors.py", "files.py"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The convrepro modules ``path`` imports (``from pkg import module`` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__root__"


def test_the_package_root_holds_only_the_entry_points_the_cli_and_the_leaf_modules():
    root_modules = {p.name for p in SRC.glob("*.py")}
    assert root_modules == ROOT_MODULES
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages | {"cli", "errors", "files"} == set(LAYERS)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_the_size_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by subject"


def test_nothing_imports_from_a_layer_above_its_own():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        own = LAYERS.get(_layer(name))
        if own is None:
            continue  # the package's own __init__/__main__
        for imported in _imports(path, modules):
            other = LAYERS.get(_layer(imported), 0)
            if other > own:
                upward.append(f"{name} imports {imported}")
    assert not upward, "\n".join(sorted(upward))


def test_leaf_modules_depend_on_nothing_but_the_errors():
    modules = _modules()
    for leaf in LEAF_MODULES:
        assert _imports(modules[leaf], modules) <= {"convrepro.errors"}


def test_there_are_no_import_cycles_between_modules():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    for name in graph:
        # Importing a module first runs the __init__ of every package above it.
        graph[name] |= {p for i in graph[name] for p in _packages_above(i) if p in modules}
        # A module's own packages are initialised before it runs: importing them is no cycle.
        graph[name] = {i for i in graph[name] if i != name and not name.startswith(f"{i}.")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _packages_above(module: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def _import_groups() -> dict[str, list[str]]:
    """Every module, one group per package (a root module's group is itself). ``__main__``
    modules are left out: importing one runs the command."""
    groups: dict[str, list[str]] = {}
    for name in sorted(_modules()):
        if name.endswith("__main__"):
            continue
        package = ".".join(name.split(".")[:2])
        groups.setdefault(package, []).append(name)
    return groups


@pytest.mark.slow  # one interpreter per package: ~5 s of imports each
@pytest.mark.parametrize("package", sorted(_import_groups()))
def test_every_module_imports_in_a_fresh_interpreter(package):
    """One interpreter per package, importing each of its modules. Importing any module of a
    package runs the package's ``__init__`` first, so the first import enters the package as
    every other would; cycles between single modules are the static test's above. A cycle
    the suite's own import order hides fails here."""
    modules = _import_groups()[package]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", "".join(f"import {m}\n" for m in modules)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
