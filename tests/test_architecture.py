"""The layers of lnexp/ (lnexp.LAYERS): every import, function-level ones included, goes down or
sideways, never up, and no two modules import each other through any path."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import lnexp

ROOT = Path(lnexp.__file__).parent


def module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(ROOT.parent).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imported(module: str, path: Path) -> set[str]:
    """The lnexp modules `module` imports anywhere in its code (`from pkg import submodule` counts as
    the submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            out |= {name if name in MODULES else base for name in names}
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {name for name in out if name in MODULES and name != module}


GRAPH = {module: imported(module, path) for module, path in MODULES.items()}


def layer(module: str) -> int:
    """The layer's index; the top-level modules (lnexp, lnexp.__main__) sit below or above them all."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in lnexp.LAYERS:
        return lnexp.LAYERS.index(parts[1])
    return len(lnexp.LAYERS) if module == "lnexp.__main__" else -1


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES if layer(m) == -1 and m != "lnexp"]
    assert loose == [], "modules outside the packages of lnexp.LAYERS"


def test_no_import_runs_up_the_layers():
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                    if layer(t) > layer(m))
    assert upward == []


def test_no_import_cycles():
    # A package's __init__ and its own submodules may import each other (a package re-exports).
    edges = {m: {t for t in targets if not (t.startswith(m + ".") or m.startswith(t + "."))}
             for m, targets in GRAPH.items()}
    graphlib.TopologicalSorter(edges).static_order()  # raises CycleError naming the cycle


def test_the_checks_see_function_level_imports(tmp_path):
    """The walk must not miss an import inside a function: the form that hides most cycles."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from lnexp.cli import app\n    return app\n")
    assert imported("lnexp.core.m", source) == {"lnexp.cli"}
