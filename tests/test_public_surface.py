"""Every module of bench/ and baselines/ says what it exports (``__all__``), and says it truly."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                 for package in ("bench", "baselines") for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_its_public_names(name):
    path = ROOT / (name.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    declared = [node for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                and any(isinstance(t, ast.Name) and t.id == "__all__"
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert declared, f"{path.relative_to(ROOT)} has no __all__"
    if name.endswith("__main__"):
        return  # running it would start the command line
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not define: {missing}"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ lists a name twice"


def test_the_module_list_is_not_empty():
    assert {"bench.cli", "bench.data.registry", "baselines.cnf", "baselines.cnf_options"} <= set(MODULES)
