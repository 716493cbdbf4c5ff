"""The import graph of edge/: no cycle, light modules free of the heavy engines, every module importable alone.

The graph is read statically (ast over edge/**/*.py), so it sees imports inside functions too: a cycle
closed by a function-level import is still a cycle between two rooms, it only fails later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "edge"

# Engines that take seconds to import or need native libraries; light modules must not load them on import.
HEAVY = ("torch", "torchao", "executorch", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "llama_cpp",
         "transformers", "safetensors", "gguf")

# Modules that must stay light: what `import edge`, `edge targets list` and `edge simulate` load.
LIGHT = (
    "edge", "edge.errors", "edge.budgets", "edge.recipes", "edge.targets", "edge.model", "edge.model.spec",
    "edge.sim", "edge.sim.*",
    "edge.export", "edge.runtime", "edge.runtime.base", "edge.quant", "edge.quant.configs", "edge.cli",
)

# The layers of edge/, lowest first: a module imports only from its own layer or lower ones (and the
# graph has no cycle, checked apart). A room is a top-level module or a package (edge.sim, edge.model, ...). docs/architecture.md
# explains each; a new room gets a layer here and a line there.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("edge.errors",),
    ("edge.budgets", "edge.recipes"),  # vocabularies: the budget grammar, the preset table
    ("edge", "edge.targets", "edge.model", "edge.calib", "edge.eval", "edge.package", "edge.cache"),
    ("edge.sim",),  # the simulator: shapes + recipe + profile, no torch
    ("edge.quant", "edge.runtime"),
    ("edge.prune", "edge.export"),
    ("edge.build", "edge.stream", "edge.validate", "edge.probe", "edge.api", "edge.quantize_dir"),
    ("edge.search", "edge.matrix"),
    ("edge.cli",),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(EDGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, source: str | None = None, is_package: bool | None = None) -> list[tuple[str, bool]]:
    """(imported module, at module top level) for every import statement in module ``name``.

    ``from a.b import c`` names a.b, and a.b.c too when that is a module of edge. Relative names
    resolve against the module's package. Class bodies run at import, so they count as top level;
    function bodies and ``if TYPE_CHECKING:`` blocks do not. ``source``: the text to read instead of
    the module's file.
    """
    if source is None:
        source, is_package = MODULES[name].read_text(), MODULES[name].name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, top))
                found.extend((f"{base}.{a.name}", top) for a in child.names if f"{base}.{a.name}" in MODULES)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue
            else:
                visit(child, top)

    visit(ast.parse(source), True)
    return found


def edge_graph() -> dict[str, set[str]]:
    """module -> the edge modules it imports anywhere (top level or inside a function)."""
    return {name: {m for m, _ in imports(name) if m in MODULES and m != name} for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            nxt = next(children, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def room(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or name in ROOMS_WITH_PACKAGES else name


ROOMS_WITH_PACKAGES = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in EDGE.glob("*/__init__.py")}


def layer(name: str) -> int:
    for i, rooms in enumerate(LAYERS):
        if room(name) in rooms:
            return i
    raise AssertionError(f"{name}: its room {room(name)} has no layer in LAYERS (tests/test_imports.py); "
                         "add it, and its line in docs/architecture.md")


def is_light(name: str) -> bool:
    return any(name == pat or (pat.endswith(".*") and name.startswith(pat[:-1])) for pat in LIGHT)


def test_graph_sees_every_kind_of_import():
    """The reader resolves relative, function-level and `from package import module` imports."""
    assert "edge.sim.model" in edge_graph()["edge.sim"]  # package __init__ importing its module
    src = ("from . import model\nfrom ..errors import ConfigError\nif TYPE_CHECKING:\n    import torch\n"
           "class A:\n    import numpy\ndef f():\n    from edge.sim import simulate\n")
    assert imports("edge.sim.x", src, False) == [
        ("edge.sim", True), ("edge.sim.model", True), ("edge.errors", True), ("numpy", True),
        ("edge.sim", False), ("edge.sim.simulate", False)]
    lazy = [m for m, top in imports("edge.cli") if not top and m.startswith("edge.")]
    assert lazy, "edge.cli imports its stages inside the commands"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(edge_graph())
    assert cycle is None, "import cycle in edge/: " + " -> ".join(cycle)


def test_imports_run_down_the_layers():
    """Every import (top level or inside a function) goes to the same layer or a lower one."""
    bad = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
           for a, bs in sorted(edge_graph().items()) for b in sorted(bs)
           if layer(b) > layer(a)]
    assert not bad, "\n".join(bad)


def test_light_modules_import_no_engine_at_top_level():
    """Light modules load no heavy engine on import, themselves or through the edge modules they import."""
    top = {name: [m for m, t in imports(name) if t] for name in MODULES}
    bad = []
    for name in filter(is_light, MODULES):
        seen, todo = {name}, [name]
        while todo:
            cur = todo.pop()
            for m in top[cur]:
                if m.split(".")[0] in HEAVY:
                    bad.append(f"{name} loads {m} (via {cur})" if cur != name else f"{name} imports {m}")
                elif m in MODULES and m not in seen:
                    seen.add(m)
                    todo.append(m)
    assert not bad, "\n".join(bad)


def test_light_modules_import_only_light_edge_modules():
    top_edge = {name: {m for m, t in imports(name) if t and m in MODULES} for name in MODULES}
    bad = [f"{name} imports {m}" for name in filter(is_light, MODULES) for m in top_edge[name] if not is_light(m)]
    assert not bad, "\n".join(bad)


SCRIPT = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for mod in [m for m in sys.modules if m == "edge" or m.startswith("edge.")]:
        del sys.modules[mod]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    """Each module imported first into a clean edge namespace, so an import-order dependence fails.

    One interpreter for all (engines stay loaded, edge's own modules are cleared before each), and a
    fresh interpreter for each light module, which must also leave torch unloaded.
    """
    run = subprocess.run([sys.executable, "-c", SCRIPT, *MODULES], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


@pytest.mark.parametrize("name", [m for m in MODULES if is_light(m)])
def test_light_module_imports_alone_without_engines(name):
    code = (f"import importlib, sys; importlib.import_module({name!r}); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", f"importing {name} loaded {run.stdout.strip()}"
