"""The package tree reads as the data flow (docs/design.md §2): an AST walk over src/randpos
finds every import that can run (module-level ones and function-local ones; ``if TYPE_CHECKING``
blocks never run and are left out) and checks that there is no import circle, that each layer
imports only the layers before it, that a function-local import is an optional heavy dependency
with a comment saying so, and that the tree is the one docs/design.md draws."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "randpos"
#: The layers, in data-flow order: each may import itself and the ones before it.
LAYERS = (
    "core",
    "positions",
    "encodings",
    "model",
    "tasks",
    "images",
    "workloads",
    "loop",
    "sweep",
    "results",
    "cli",
)
#: What a function may import locally: optional or heavy dependencies only.
HEAVY = ("matplotlib", "pandas", "sklearn", "scipy", "ray", "transformers", "torch._inductor",
         "torch._dynamo", "torch.utils.tensorboard", "tensorboard", "wandb")  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"


def runtime_imports(tree: ast.Module):
    """(import node, inside a function?) for every import that can run."""

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, inner)

    yield from walk(tree, False)


def imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for module, path in mods.items():
        tree = ast.parse(path.read_text())
        for node, _ in runtime_imports(tree):
            for name in imported_names(node, module, path.name == "__init__.py"):
                target = resolve(name) if name.startswith("randpos") else None
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[1:] == ["__main__"]:  # `python -m randpos`: the command line's entry point
        return "cli"
    return parts[1] if len(parts) > 1 else None  # None: the root package (its version)


def test_no_import_circles_counting_function_local_imports():
    graph = import_graph()
    assert sum(len(e) for e in graph.values()) > 100  # the walk sees the imports at all
    assert cycles(graph) == []


def test_each_layer_imports_only_the_layers_before_it():
    bad = []
    for module, targets in import_graph().items():
        mine = layer(module)
        for target in targets:
            theirs = layer(target)
            if mine is None or theirs is None:
                continue
            if LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{module} -> {target}")
    assert bad == []


def commented(lines: list[str], node: ast.AST) -> bool:
    """A comment on the import's lines, or just above it (above a run of imports)."""
    if any("#" in line for line in lines[node.lineno - 1 : node.end_lineno]):
        return True
    above = node.lineno - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def test_function_local_imports_are_optional_heavy_dependencies_with_a_comment():
    bad = []
    for module, path in modules().items():
        lines = path.read_text().splitlines()
        for node, local in runtime_imports(ast.parse("\n".join(lines))):
            if not local:
                continue
            name = imported_names(node, module, path.name == "__init__.py")[0]
            heavy = any(name == h or name.startswith(h + ".") for h in HEAVY)
            if not (heavy and commented(lines, node)):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert bad == []


def test_the_tree_is_the_one_the_design_draws():
    root = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__")))
    # nothing at the root but __init__.py (the version) and __main__.py (python -m randpos)
    assert root == sorted([*LAYERS, "__init__.py", "__main__.py"])
    for name in LAYERS:
        assert (PACKAGE / name / "__init__.py").is_file(), name
    design = (ROOT / "docs" / "design.md").read_text()
    drawn = re.findall(r"^\| `(\w+)` \|", design, re.M)  # the layer table, in its order
    assert tuple(drawn) == LAYERS
