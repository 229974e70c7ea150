"""Nothing outside a family's folder compares a family's name: loading, commands, replay, evaluation and the
benchmarks ask the family registry (`models.core.families`) instead."""
from __future__ import annotations

import ast
from pathlib import Path

from models.families import list_families

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("streams", "sinks", "schemas", "models", "ops")
FAMILY_FOLDER = ROOT / "models" / "families"
# (file, name): why that comparison is not about a family
NOT_A_FAMILY = {("streams/commands/replay.py", "gate"): "the run record's consistency-gate field, not the gate family"}


def _names(node: ast.AST) -> set[str]:
    """The string constants `node` is or holds (a tuple/list/set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names(e) for e in node.elts)) if node.elts else set()
    return set()


def family_comparisons(source: str, families: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every `==`/`!=`/`in`/`not in` comparison against a family's name, and every
    `.startswith`/`.endswith` of one (also as a "gate+" prefix)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [(node.lineno, n) for n in _names(side) if n in families]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith")):
            for arg in node.args:
                found += [(node.lineno, n) for n in _names(arg) if n.strip("+") in families]
    return found


def test_the_scan_finds_what_it_looks_for():
    fams = {"severity", "segmenter"}
    src = ('if mf.family == "severity": pass\nif x in ("segmenter", "gate"): pass\n'
           'if fam.startswith("severity"): pass\nif arch == "fast": pass\nd = {"segmenter": 1}\n')
    assert family_comparisons(src, fams) == [(1, "severity"), (2, "segmenter"), (3, "severity")]


def test_no_family_name_is_compared_outside_the_family_folders():
    families = set(list_families())
    assert {"severity", "segmenter", "classifier", "gate"} <= families
    found = []
    for pkg in SCANNED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if FAMILY_FOLDER in path.parents or ".venv" in path.parts:
                continue
            rel = str(path.relative_to(ROOT))
            for line, name in family_comparisons(path.read_text(encoding="utf-8"), families):
                if (rel, name) not in NOT_A_FAMILY:
                    found.append(f"{rel}:{line} compares the family name {name!r}")
    assert not found, "ask the family registry (models.core.families) instead:\n" + "\n".join(found)
