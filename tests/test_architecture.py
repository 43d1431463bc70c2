"""The layout shows the architecture: what lives at the package root, file sizes, import layers.

Layers, lowest first: a package may import from its own layer and those below it, never above.
Imports inside functions count too: a lazy import upward is still a dependency upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "convrepro"
MAX_LINES = 400

# config -> CLI -> DataModule + ImageClassifier(backbone) -> Trainer -> run folder + W&B -> ablation
LAYERS = {
    "errors": 0,
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
# Modules any layer may use: they depend on the standard library (and convrepro.errors) only.
LEAF_MODULES = {"convrepro.errors", "convrepro.runs.files"}
ROOT_MODULES = {"__init__.py", "__main__.py", "cli.py", "errors.py"}


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


def test_the_package_root_holds_only_the_entry_points_the_cli_and_the_errors():
    root_modules = {p.name for p in SRC.glob("*.py")}
    assert root_modules == ROOT_MODULES
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages | {"cli", "errors"} == set(LAYERS)


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
        for imported in _imports(path, modules) - LEAF_MODULES:
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
    # A package's __init__ re-exporting its submodules is not a cycle of ideas.
    for name in graph:
        graph[name] = {i for i in graph[name] if not name.startswith(f"{i}.")}
        if modules[name].name == "__init__.py":
            graph[name] = {i for i in graph[name] if not i.startswith(f"{name}.")}
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
