"""Arrows point down: `sinks/`, `models/` and `schemas/` never import `streams/`, and no import cycle.

Read from the source with `ast` (nothing is imported or executed), so a violation is found even in
a module whose dependencies are not installed, and inside functions too (both checks).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("streams", "sinks", "models", "schemas")
BELOW_STREAMS = ("sinks", "models", "schemas")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(*packages: str) -> dict[str, Path]:
    """Module name → file of every module under `packages`."""
    return {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))
            if ".venv" not in p.parts and "__pycache__" not in p.parts}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ImportFrom names (resolving `from . import x` / `from ..a import b`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported(module: str, path: Path, nodes) -> list[tuple[int, str]]:
    """(line, imported module or `module.name`) of the import statements among `nodes`."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = absolute(module, node, path.name == "__init__.py")
            out += [(node.lineno, target)] + [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) in (
                  "import_module", "__import__"))):
            out.append((node.lineno, node.args[0].value))  # importlib.import_module("streams.x")
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level(body: list[ast.stmt]):
    """Statements run when the module is imported: not in functions or classes, not under `if TYPE_CHECKING:`."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from module_level(stmt.body)
            yield from module_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody):
                yield from module_level(block)
        elif isinstance(stmt, (ast.With, ast.For, ast.While)):
            yield from module_level(stmt.body)
        else:
            yield stmt
            yield from (n for n in ast.walk(stmt) if isinstance(n, ast.Call))


def all_nodes(tree: ast.AST):
    """Every node of `tree`, inside functions and classes too, but not under `if TYPE_CHECKING:` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(at_import_only: bool = False) -> dict[str, set[str]]:
    """First-party module → the first-party modules it imports, wherever the import statement is (inside
    functions too: an import there runs later but still ties the two modules together); with
    `at_import_only`, only those run when it is imported (module level)."""
    mods = sources(*FIRST_PARTY)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = parse(path)
        nodes = module_level(tree.body) if at_import_only else all_nodes(tree)
        for _line, target in imported(mod, path, nodes):
            # `from a.b import c`: the module a.b.c when it is one, else a.b (c is a name in it)
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != mod:
                graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None (iterative DFS, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


@pytest.mark.parametrize("package", BELOW_STREAMS)
def test_no_module_below_streams_imports_streams(package):
    found = []
    for mod, path in sources(package).items():
        for line, target in imported(mod, path, ast.walk(parse(path))):
            if target == "streams" or target.startswith("streams."):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not found, f"{package}/ must not import streams/ (inject what it needs instead):\n" + "\n".join(
        sorted(set(found)))


def test_the_first_party_import_graph_has_no_cycle():
    """No cycle, counting the imports inside functions too: a function-level import that only dodges a
    cycle at import time still ties the two modules in both directions."""
    graph = import_graph()
    assert {"streams.app", "sinks.runner", "models.core.checkpoints", "schemas.codec"} <= set(graph)  # the graph is read
    assert "models.data.synthetic" in graph["streams.sim.simulator"]  # an import inside a function is an edge
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (imports inside functions included): " + " -> ".join(cycle or [])
    assert find_cycle(import_graph(at_import_only=True)) is None


def test_the_checks_see_what_they_look_for():
    """The checks themselves: a cycle is reported with its path, an import inside a function is seen."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("import os\ndef f():\n    from streams.settings import Settings\n"
                     "if TYPE_CHECKING:\n    import streams.app\n")
    everywhere = [t for _l, t in imported("sinks.x", Path("x.py"), ast.walk(tree))]
    assert "streams.settings" in everywhere and "streams.app" in everywhere
    at_import = [t for _l, t in imported("sinks.x", Path("x.py"), module_level(tree.body))]
    assert at_import == ["os"]
    run_ever = [t for _l, t in imported("sinks.x", Path("x.py"), all_nodes(tree))]
    assert sorted(run_ever) == ["os", "streams.settings", "streams.settings.Settings"]  # not TYPE_CHECKING
    rel = ast.parse("from .base import TP\nfrom .. import schemas\n").body
    assert absolute("sinks.runner", rel[0], False) == "sinks.base"
    assert absolute("sinks.a.b", rel[1], False) == "sinks"


def test_the_readme_and_architecture_name_every_streams_subpackage():
    """The README's layout table and ARCHITECTURE.md follow the tree: every subpackage of streams/ is named."""
    subpackages = sorted(p.parent.name for p in (ROOT / "streams").glob("*/__init__.py"))
    assert subpackages, "no subpackages found"
    for doc in ("README.md", "ARCHITECTURE.md"):
        text = (ROOT / doc).read_text()
        missing = [s for s in subpackages if f"`streams/{s}/`" not in text]
        assert not missing, f"{doc} does not name {missing}"
