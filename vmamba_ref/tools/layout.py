"""The project's layout as its imports draw it: which layer each module belongs to, which layers
it may import, and the import graph read from the source (AST, nothing is imported).

    tools -> network -> oracle -> contract <- vmamba_fast
    tools -> kit -> oracle                    (the network loads vmamba_fast by name, get_ops)

`tests/test_layout.py` fails on any import cycle between two files and on any arrow that
`ALLOWED` does not list; `docs/layout.md` draws its table from `layout_table()`, so neither can
go stale. `python -m vmamba_ref.tools.layout` prints the table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vmamba_ref", "vmamba_fast")

# layer -> what it is for
LAYERS: dict[str, str] = {
    "contract": "what every backend shares: argument checks, compute dtype, routes, op protocol, loader, FLOP formula",
    "oracle": "the paper's operators as plain loops: cross-scan, selective scan, SS2D core",
    "network": "config, layers, initialization, SS2D, the model, checkpoints, the public API",
    "kit": "property tests of any scan kernel against the oracle",
    "tools": "the `vmamba` command and what it runs: demo, training, bench, FLOPs, ERF, export, plots",
    "fast": "the same operators fast: the operator declarations, Numba, Triton, plain PyTorch",
}

# layer -> the layers its modules may import (besides its own)
ALLOWED: dict[str, frozenset[str]] = {
    "contract": frozenset(),
    "oracle": frozenset({"contract"}),
    "network": frozenset({"contract", "oracle"}),
    "kit": frozenset({"contract", "oracle"}),
    "tools": frozenset({"contract", "oracle", "network", "kit"}),
    "fast": frozenset({"contract"}),
}

_ORACLE = {"vmamba_ref.cross_scan", "vmamba_ref.selective_scan", "vmamba_ref.ss2d_core"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name of the project."""
    if module.startswith("vmamba_fast"):
        return "fast"
    if module == "vmamba_ref.contract":
        return "contract"
    if module in _ORACLE:
        return "oracle"
    if module.startswith("vmamba_ref.testing"):
        return "kit"
    if module.startswith("vmamba_ref.tools"):
        return "tools"
    return "network"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the two packages: dotted name (a package by its own name) -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported_names(tree: ast.AST, package: str) -> Iterable[str]:
    """Dotted names a module imports: `import a.b` gives a.b; `from a import b` gives a and a.b
    (b may be a submodule or a name in a); relative imports are resolved against `package`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports, read from the source. An import of a module's
    name counts, whether at the top or inside a function; loading by a name in a string (the
    contract's `get_ops`) does not: that is the plugin lookup the layout allows."""
    found = modules(root)
    graph = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        names = set(_imported_names(ast.parse(path.read_text(), str(path)), package))
        targets = set()
        for imported in names:
            if imported in found and imported != name:
                # `from pkg import sub` names both pkg and pkg.sub: the submodule is the edge.
                if any(other.startswith(imported + ".") and other in names for other in found):
                    continue
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module, or a module
    that imports itself (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def forbidden_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that run against the layers: (importer, imported) pairs `ALLOWED` does not list."""
    return sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if layer_of(target) != layer_of(source) and layer_of(target) not in ALLOWED[layer_of(source)]
    )


def layout_table(root: Path = ROOT) -> str:
    """A Markdown table: each layer, what it is for, its modules, and what it imports."""
    graph = import_graph(root)
    by_layer: dict[str, list[str]] = {layer: [] for layer in LAYERS}
    for name in sorted(graph):
        by_layer[layer_of(name)].append(name)
    rows = ["| layer | what | modules | imports from |", "|---|---|---|---|"]
    for layer, names in by_layer.items():
        used = sorted({layer_of(t) for n in names for t in graph[n]} - {layer})
        listed = ", ".join(f"`{n}`" for n in names)
        rows.append(f"| {layer} | {LAYERS[layer]} | {listed} | {', '.join(used) or 'nothing'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(layout_table())
