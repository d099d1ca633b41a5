"""The package's layers point down only, and no module imports another that imports it back.

Read from the source (every ``import`` statement, at module level or inside a function), so a local import cannot
hide an upward dependency or a cycle.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ddip"

# Lowest first. A module may import its own layer or any layer below it, never one above.
LAYERS = [
    ("ddip", "ddip.errors", "ddip.timing", "ddip.io", "ddip.distributed", "ddip.signals", "ddip.devices"),  # plumbing
    ("ddip.physics", "ddip.data", "ddip.metrics"),  # operators, volumes and phantoms, image metrics
    ("ddip.priors", "ddip.tasks"),  # the denoiser; the paper's tasks as data and operators
    ("ddip.solvers",),  # the sampling loop and its steps
    ("ddip.checkpoint",),  # resumable solves
    ("ddip.adapt",),  # LoRA and the adaptation hook
    ("ddip.evaluation", "ddip.methods", "ddip.reconstruct", "ddip.outputs"),  # gate; registry; entry point; what a run writes
    ("ddip.benchmark",),
    ("ddip.cli", "ddip.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(name: str) -> int:
    """The layer of a module: that of the longest prefix listed in LAYERS."""
    best, rank = "", None
    for r, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, r
    assert rank is not None, f"{name} is in no layer: add it to LAYERS"
    return rank


def imports_in(source: str) -> set[str]:
    """The ddip modules a source imports (``from ddip.x import y`` counts as ddip.x.y when that is a module)."""
    tree = ast.parse(source)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "ddip"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ddip":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in MODULES else node.module)
    return out


GRAPH = {name: imports_in(MODULES[name].read_text()) - {name} for name in MODULES}


def test_every_module_has_a_layer_and_imports_only_existing_modules():
    for name, targets in GRAPH.items():
        layer(name)
        assert targets <= set(MODULES), f"{name} imports unknown modules {targets - set(MODULES)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_points_up(name):
    upward = sorted(t for t in GRAPH[name] if layer(t) > layer(name))
    assert not upward, f"{name} (layer {layer(name)}) imports higher layers: {upward}"


def test_no_import_cycle():
    # A package's __init__ re-exporting its submodules is not a dependency of those submodules on it.
    def edges(name):
        return {t for t in GRAPH[name] if not (name.startswith(t + ".") and MODULES[t].name == "__init__.py")}

    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges(node)):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])


def test_the_walker_sees_imports_inside_functions():
    """A function-local import (how upward dependencies used to hide) is found, and resolved to the module."""
    src = "import torch\n\ndef f():\n    from ddip.solvers import solve\n    from ddip import distributed\n"
    assert imports_in(src) == {"ddip.solvers", "ddip.distributed"}
    assert layer("ddip.solvers") > layer("ddip.priors.prior")


def third_party_imports() -> set[str]:
    """Top-level names of the non-standard-library packages ddip imports (anywhere in a module)."""
    import sys

    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "ddip"}


def test_declared_dependencies_are_exactly_the_imports():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    imported = {n.lower() for n in third_party_imports()}  # every import name here is its distribution's name
    assert imported == declared, f"imported but not declared: {imported - declared}; declared, not imported: " \
                                 f"{declared - imported}"
