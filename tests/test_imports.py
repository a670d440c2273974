"""Import hygiene of the package: every posectl module imports; the module-level imports between posectl
modules form no cycle and respect the layering

    cli  ->  orchestrator  ->  methods  ->  models / datasets  ->  core

(posectl/config.py, errors.py and checkpoint.py count as core). Imports inside functions, and those under
`if TYPE_CHECKING:`, are not module-level: they are how a lower layer may reach a higher one lazily."""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import posectl

ROOT = Path(posectl.__file__).resolve().parent

LAYERS = {"core": 0, "config": 0, "errors": 0, "checkpoint": 0,
          "models": 1, "datasets": 1,
          "methods": 2,
          "orchestrator": 3,
          "cli": 4, "__main__": 4}
LAYER_NAMES = {0: "core", 1: "models/datasets", 2: "methods", 3: "orchestrator", 4: "cli"}


def _modules() -> tuple[dict[str, Path], list[str]]:
    """Every module of the package (name -> source file), found with pkgutil.walk_packages (which imports
    the packages to look inside them), and the packages that failed to import."""
    errors: list[str] = []
    found = {"posectl": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="posectl.", onerror=errors.append):
        rel = Path(*info.name.split(".")[1:])
        found[info.name] = ROOT / rel / "__init__.py" if info.ispkg else (ROOT / rel).with_suffix(".py")
    return found, errors


MODULES, WALK_ERRORS = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(name: str) -> dict[str, int]:
    """posectl modules that `name` imports at module level -> line of the first such import."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target.split(".")[0] != "posectl":
            return
        while target not in MODULES:        # `import posectl.a.b` of a name that is not a module
            target = target.rpartition(".")[0]
        if target != name:
            out.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return                           # runs when called, not at import
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in MODULES else base, node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return out


def _graph() -> dict[str, dict[str, int]]:
    return {name: _module_level_imports(name) for name in sorted(MODULES)}


def _layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return 0                             # posectl/__init__.py: the version string only
    assert parts[1] in LAYERS, f"{name}: not in any layer; add posectl.{parts[1]} to LAYERS in {__file__}"
    return LAYERS[parts[1]]


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per back edge found by a depth-first search (empty when the graph is acyclic)."""
    state: dict[str, int] = {}               # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


def test_walk_finds_the_package():
    assert not WALK_ERRORS, f"packages that failed to import while walking posectl: {WALK_ERRORS}"
    for name in ("posectl.cli", "posectl.cli.common", "posectl.orchestrator.paths", "posectl.methods.base",
                 "posectl.core.skeleton", "posectl.config"):
        assert name in MODULES, sorted(MODULES)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "posectl.__main__"))  # __main__ runs the CLI
def test_module_imports(name):
    importlib.import_module(name)


def test_module_level_imports_are_acyclic():
    graph = _graph()
    cycles = _cycles(graph)

    def show(cycle):
        return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
    assert not cycles, "import cycles at module level:\n" + "\n".join(show(c) for c in cycles)


def test_module_level_imports_respect_the_layering():
    bad = [f"{src} ({LAYER_NAMES[_layer(src)]}) imports {dst} ({LAYER_NAMES[_layer(dst)]}) at line {line}"
           for src, targets in _graph().items() for dst, line in sorted(targets.items())
           if _layer(src) < _layer(dst)]
    assert not bad, ("a lower layer imports a higher one at module level "
                     "(cli -> orchestrator -> methods -> models/datasets -> core):\n" + "\n".join(bad))


def test_the_checks_see_cycles_and_lazy_imports(tmp_path):
    """The checker itself: a cycle is reported, function-level and TYPE_CHECKING imports are not edges."""
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nfrom posectl.errors import PosectlError\n"
                   "if TYPE_CHECKING:\n    from posectl.cli import app\n"
                   "try:\n    import posectl.config as c\nexcept ImportError:\n    pass\n"
                   "def f():\n    from posectl.orchestrator import train\n"
                   "class K:\n    from posectl.core import skeleton\n")
    MODULES["posectl.core._probe"] = src
    try:
        assert _module_level_imports("posectl.core._probe") == {
            "posectl.errors": 2, "posectl.config": 6, "posectl.core.skeleton": 12}
    finally:
        del MODULES["posectl.core._probe"]
