"""The package's layering, from its source (every import, module-level or inside a function):

- a module imports only modules of its own layer or of lower ones (``LAYERS``, lowest first);
  the command-line modules (``*/cli.py``) and the public API sit on top of everything;
- no two modules import each other, directly or through others (no import cycle).

Imports under ``if TYPE_CHECKING:`` are for annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "clt_bench"

# lowest first; a module's layer is that of its longest matching prefix (``clt_bench.`` omitted)
LAYERS: list[tuple[str, ...]] = [
    ("errors", "paths", "threads", "runlock", "io", "plots", "stats"),
    ("config", "artifacts"),
    ("models",),
    ("task",),
    ("model_training",),
    ("baseline",),
    ("activations",),
    ("clt",),
    ("graphs",),
    ("features",),
    ("compare",),
    ("plt", "run_context"),
    ("stability", "report"),
    ("stages", "plt_worker"),
    ("pipeline", "preflight"),
    ("cli", "api", "__init__", "__main__", "pytest_plugin", "testing"),
]

# config checks, as it loads, that the names it is given exist: the task file (``task.spec``) and,
# for the default circuit, whether the model is GPT-2 small (``models.hub``); both imports are
# inside the check functions
ALLOWED_UPWARD = {
    ("clt_bench.config", "clt_bench.task.spec"),
    ("clt_bench.config", "clt_bench.models.hub"),
}
TOP = len(LAYERS) - 1


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    name = module.removeprefix("clt_bench").lstrip(".") or "__init__"
    if name.split(".")[-1] in ("cli", "__main__"):
        return TOP  # each command-line module belongs with the command line
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} has no layer in tests/test_layering.py"
    return best


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` names ``a.b`` if a module)."""
    me = module_name(path)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("clt_bench"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                pkg = me.split(".")[
                    : len(me.split(".")) - node.level + (path.name == "__init__.py")
                ]
                base = ".".join([*pkg, node.module])
            if base.startswith("clt_bench"):
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != me}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    return {m: imports(p, modules) for m, p in files.items()}


def test_no_layer_imports_a_higher_one(graph):
    upward = sorted(
        f"{m} ({layer(m)}) -> {n} ({layer(n)})"
        for m, deps in graph.items()
        for n in deps
        if layer(n) > layer(m) and n != "clt_bench" and (m, n) not in ALLOWED_UPWARD
    )
    assert upward == [], "\n".join(upward)


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    assert cycles == [], cycles


def test_every_module_has_a_layer(graph):
    for m in graph:
        layer(m)


def test_no_two_modules_share_a_name_for_different_jobs():
    """A file name says what it does: the only names used twice are the per-package
    conventions (``__init__``, ``cli``, ``stage``)."""
    seen: dict[str, list[str]] = {}
    for p in PKG.rglob("*.py"):
        seen.setdefault(p.stem, []).append(module_name(p))
    shared = {k: v for k, v in seen.items() if len(v) > 1 and k not in ("__init__", "cli", "stage")}
    assert shared == {}, shared
