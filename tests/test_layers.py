"""The package's layers: no import cycle, and no module importing one above it.

Each module of `oneos` belongs to one layer of LAYERS, lowest first. A module may import
modules of its own layer or of lower ones, never of a higher one; and no chain of imports
may come back to where it started. Imports inside functions count too: a deferred import
is still a dependency, and a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import oneos

ROOT = Path(oneos.__file__).parent

#: Lowest first. A name covers the module of that name and every module below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("oneos.errors", "oneos.durations", "oneos.quantities", "oneos.paths", "oneos.service",
              "oneos.children", "oneos.secretfiles", "oneos.identity")),
    ("documents", ("oneos.selectors", "oneos.documents")),
    ("name server", ("oneos.nameserver",)),
    ("cluster state", ("oneos.state", "oneos.enrollment")),
    ("parts", ("oneos.bus", "oneos.gpio", "oneos.compiler", "oneos.manifests", "oneos.diff", "oneos.broker")),
    ("controller", ("oneos.controller",)),
    ("node agent", ("oneos.nodeagent",)),
    ("one-machine system", ("oneos.dev",)),
    ("commands", ("oneos.cli", "oneos.demo")),
]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("oneos",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of the package that `path` imports, wherever in the file the import is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "oneos"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "oneos":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def layer(module: str) -> int | None:
    """The index of the module's layer; the package itself (`oneos`, its version) is the lowest."""
    if module == "oneos":
        return 0
    best: tuple[int, int] | None = None    # (length of the name matched, layer)
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[0]):
                best = (len(name), rank)
    return None if best is None else best[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `edges`, one per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if layer(m) is None)
    assert not unplaced, f"modules with no layer (add them to LAYERS in {__file__}): {unplaced}"


def test_no_module_imports_one_above_it():
    upward = []
    for module, deps in sorted(graph().items()):
        for dep in sorted(deps):
            own, other = layer(module), layer(dep)
            if own is not None and other is not None and other > own:
                upward.append(f"{module} ({LAYERS[own][0]}) imports {dep} ({LAYERS[other][0]})")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_there_is_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert cycles(edges) == expected


def test_the_walker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from oneos.dev import run\n    import oneos.state\n")
    assert imports(source, {"oneos.dev", "oneos.state"}) == {"oneos.dev", "oneos.state"}
