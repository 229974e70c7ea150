"""Nothing in the project loads with pickle: no `pickle`/`dill`/`shelve`/`marshal` import, no
`torch.load(..., weights_only=False)`, no `np.load(..., allow_pickle=True)` (read with `ast`).

A checkpoint or cache file from elsewhere may then give wrong numbers but never runs code
(CVE-2025-32434 is fixed in the torch floor, torch>=2.6, for `weights_only=True`).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "sinks", "models", "schemas", "ops")
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
# Nothing is exempt: the training engines' --resume state (models/training/state.py) is read with
# weights_only=True too.
ALLOWED: set[str] = set()


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"{n.lineno}: import {a.name}" for a in node.names for n in [node]
                    if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            out.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            kw = {k.arg: k.value for k in node.keywords}
            if name == "load" and "weights_only" not in kw and getattr(getattr(node.func, "value", None), "id", None) == "torch":
                out.append(f"{node.lineno}: torch.load without weights_only=True")
            for arg in ("weights_only",):
                v = kw.get(arg)
                if v is not None and not (isinstance(v, ast.Constant) and v.value is True):
                    out.append(f"{node.lineno}: {name}({arg}=...) not True")
            v = kw.get("allow_pickle")
            if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                out.append(f"{node.lineno}: {name}(allow_pickle=...) not False")
    return out


def test_nothing_loads_with_pickle():
    found = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if ".venv" in p.parts or "__pycache__" in p.parts or rel in ALLOWED:
                continue
            if v := _violations(p):
                found[rel] = v
    assert not found, f"pickle-based loading found (use JSON/npz, weights_only=True): {found}"


def test_scan_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch\nfrom dill import loads\n"
                   "torch.load('x', weights_only=False)\ntorch.load('y')\ntorch.load('y', 'cpu')\n"
                   "np.load('z', allow_pickle=True)\n")
    assert len(_violations(bad)) == 6
    good = tmp_path / "good.py"
    good.write_text("import torch\ntorch.load('x', map_location='cpu', weights_only=True)\n"
                    "np.load('z', allow_pickle=False)\n")
    assert _violations(good) == []


def test_torch_floor_has_the_weights_only_fix():
    import re

    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert m and (int(m[1]), int(m[2])) >= (2, 6), "torch < 2.6 allows bypassing weights_only=True (CVE-2025-32434)"
    m = re.search(r'"torchvision>=0\.(\d+)', text)
    assert m and int(m[1]) >= 21, "torchvision 0.21 is the release that pairs with torch 2.6"
