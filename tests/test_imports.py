"""The layers hold: read every project import with ``ast`` (no module is imported).

shared < scenarios < client, server < fedsigma. A module imports only from its own
layer or lower ones (client and server not from each other); ``shared/`` is pure
numpy (no Flower); no import cycles; no project import hidden inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYER = {"shared": 0, "scenarios": 1, "client": 2, "server": 2, "fedsigma": 3}
PACKAGES = tuple(LAYER)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    """Every module of the five packages, by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


MODULES = project_files()


def _absolute(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in a file; ``from pkg
    import name`` counts as ``pkg.name`` when that is a project module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, module, path)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in MODULES else base, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


GRAPH = {mod: imports_of(mod, path) for mod, path in MODULES.items()}


def test_the_packages_are_found():
    assert {_top(m) for m in MODULES} == set(PACKAGES)
    assert "server.methods" in MODULES and "scenarios.run_config" in MODULES


def test_each_layer_imports_only_itself_and_lower_layers():
    bad = []
    for mod, imports in GRAPH.items():
        own = _top(mod)
        for name, line, _ in imports:
            other = _top(name)
            if other in LAYER and other != own and LAYER[other] >= LAYER[own]:
                bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line} imports {name} ({other}/ is not below {own}/)")
    assert not bad, "\n".join(bad)


def test_nothing_below_the_tool_imports_fedsigma():
    bad = [f"{MODULES[mod].relative_to(ROOT)}:{line} imports {name}"
           for mod, imports in GRAPH.items() if _top(mod) != "fedsigma"
           for name, line, _ in imports if _top(name) == "fedsigma"]
    assert not bad, "\n".join(bad)


def test_shared_is_pure_numpy_without_flower():
    bad = [f"{MODULES[mod].relative_to(ROOT)}:{line} imports {name}"
           for mod, imports in GRAPH.items() if _top(mod) == "shared"
           for name, line, _ in imports if _top(name) == "flwr" or _top(name) in set(LAYER) - {"shared"}]
    assert not bad, "\n".join(bad)


def test_no_project_import_is_hidden_inside_a_function():
    bad = [f"{MODULES[mod].relative_to(ROOT)}:{line} imports {name} inside a function"
           for mod, imports in GRAPH.items()
           for name, line, inside in imports if inside and _top(name) in LAYER]
    assert not bad, "\n".join(bad)


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-import),
    by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, []):
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles():
    edges = {mod: sorted({name for name, _, _ in imports if name in MODULES and name != mod})
             for mod, imports in GRAPH.items()}
    assert not cycles(edges), cycles(edges)


@pytest.mark.parametrize("graph, expected", [
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, [["a", "b", "c"]]),
    ({"a": ["b"], "b": []}, []),
    ({"a": ["a"]}, [["a"]]),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected


def test_the_reader_sees_hidden_and_relative_imports(tmp_path, monkeypatch):
    path = ROOT / "server" / "methods.py"
    source = "from . import build\nimport numpy\ndef f():\n    from scenarios import loader\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == path else "")
    found = imports_of("server.methods", path)
    assert ("server.build", 1, False) in found and ("numpy", 2, False) in found
    assert ("scenarios.loader", 4, True) in found
