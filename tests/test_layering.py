"""Dependencies point down: no import cycle, no upward import, no module over 400 lines.

The rank table is issue 16's layering rule. A module may import only from its own rank or below; function-level
imports count too (they are deferred, not absent). Cycles are searched twice: among module-level imports (the ones
that run when a module is first imported) and among all imports (a function-level import back into a module that
imports you is a cycle too, merely postponed). Imports are read with `ast`, so nothing here imports condense itself and
doctest examples inside docstrings are ignored.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "condense"

# Longest matching prefix wins. A module that matches none fails the test: give it a rank here.
RANKS = {
    "condense.errors": 0,
    "condense.progress": 0,
    "condense.version": 0,
    "condense.core": 1,
    "condense.data": 2,
    "condense.measurement": 2,
    "condense.quantize": 3,
    "condense.prune": 3,
    "condense.factorize": 3,
    "condense.fusion": 3,
    "condense.early_exit": 3,
    "condense.speculative": 3,
    "condense.distillation": 3,
    "condense.train": 3,
    "condense.export": 3,
    "condense.tasks": 4,
    "condense.pipeline": 5,
    "condense.loading": 5,
    "condense.recipes": 5,
    "condense.searching": 5,
    "condense.report": 5,
    "condense.federated": 5,
    "condense.testing": 5,
    "condense.cli": 6,
    "condense.__main__": 6,
    "condense": 6,
}

MAX_LINES = 400

# Exceptions (files over MAX_LINES, upward imports, cycle-closing function-level imports). Keep them empty: fix the
# layering instead of adding an entry.
SIZE_ALLOWED: set[str] = set()
UPWARD_ALLOWED: set[tuple[str, str]] = set()
CYCLE_EDGES_ALLOWED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    module_level: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _targets(node: ast.stmt, importer: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The condense modules an import statement names (`from a import b` names a.b when b is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        base = (_resolve_relative(importer, is_package, node.level, node.module) if node.level
                else node.module or "")
        names = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            names.append(sub if sub in modules else base)
    found = []
    for name in names:
        while name and name not in modules:  # `import condense.x.y` where y is a name, not a module
            name = name.rpartition(".")[0]
        if name.split(".")[0] == "condense" and name not in found:
            found.append(name)
    return found


def _imports(modules: dict[str, Path]) -> list[Import]:
    """Every import statement of `modules` that names a condense module (parsed once per package folder)."""
    return list(_parse(tuple(sorted(modules.items()))))


@functools.lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, Path], ...]) -> tuple[Import, ...]:
    modules = dict(items)
    result = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, module_level: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, name, is_package, modules):
                        if target != name:
                            result.append(Import(name, target, child.lineno, module_level))
                inner = module_level and not isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, inner)

        visit(tree, True)
    return tuple(result)


def _rank(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        rank = RANKS.get(".".join(parts[:n]))
        if rank is not None:
            return rank
    return None


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as its sorted modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return sorted(sorted(c) for c in components)


def _closed_path(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), start repeated at the end."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ()) & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def test_every_module_has_a_rank():
    unranked = sorted(m for m in _modules() if _rank(m) is None)
    assert not unranked, f"give these modules a rank in RANKS of {__file__}: {unranked}"


def _edges(*, module_level_only: bool, allowed: set[tuple[str, str]] = frozenset()) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in _imports(_modules()):
        if (imp.module_level or not module_level_only) and (imp.importer, imp.imported) not in allowed:
            edges.setdefault(imp.importer, set()).add(imp.imported)
    return edges


def _describe(cycles: list[list[str]], edges: dict[str, set[str]]) -> str:
    return "\n".join(f"{' -> '.join(_closed_path(c, edges))}  (modules in the cycle: {', '.join(c)})"
                     for c in cycles)


def test_no_import_cycle():
    edges = _edges(module_level_only=True)
    cycles = _cycles(edges)
    assert not cycles, "import cycles (move what both sides need into a lower module):\n" + _describe(cycles, edges)


def test_no_import_cycle_through_function_level_imports():
    edges = _edges(module_level_only=False, allowed=CYCLE_EDGES_ALLOWED)
    cycles = _cycles(edges)
    assert not cycles, ("import cycles through function-level imports (move what both sides need into a lower "
                        "module, or register instead of importing back):\n" + _describe(cycles, edges))


def test_no_upward_import():
    modules = _modules()
    upward = []
    for imp in _imports(modules):
        a, b = _rank(imp.importer), _rank(imp.imported)
        if a is not None and b is not None and b > a and (imp.importer, imp.imported) not in UPWARD_ALLOWED:
            where = "" if imp.module_level else " (in a function)"
            upward.append(f"{imp.importer} (rank {a}) -> {imp.imported} (rank {b}), line {imp.line}{where}")
    assert not upward, ("upward imports (invert them: register into a lower registry, or move the shared "
                        "piece down):\n" + "\n".join(sorted(set(upward))))


def test_every_allowed_import_still_happens():
    """An allow-list entry whose import is gone must go too, so the lists only shrink."""
    edges = {(i.importer, i.imported) for i in _imports(_modules())}
    stale = sorted((UPWARD_ALLOWED | CYCLE_EDGES_ALLOWED) - edges)
    assert not stale, f"remove these from the allow-lists of {__file__}: {stale}"


def test_no_module_over_the_line_limit():
    long = []
    for name, path in _modules().items():
        rel = path.relative_to(PACKAGE_DIR.parent).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and rel not in SIZE_ALLOWED:
            long.append(f"{rel}: {lines} lines")
    assert not long, f"modules over {MAX_LINES} lines (split them by concern):\n" + "\n".join(sorted(long))


def test_the_walker_sees_function_level_relative_and_cyclic_imports(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with each kind of violation is caught."""
    pkg = tmp_path / "condense"
    (pkg / "core").mkdir(parents=True)
    (pkg / "tasks").mkdir()
    for init in ("__init__.py", "core/__init__.py", "tasks/__init__.py"):
        (pkg / init).write_text("")
    (pkg / "core" / "a.py").write_text("from . import b\n")
    (pkg / "core" / "b.py").write_text('"""\n>>> import condense.tasks.m\n"""\n'  # a doctest: not an import
                                       "import condense.core.a\n"
                                       "def f():\n    from ..tasks.m import thing\n")
    (pkg / "tasks" / "m.py").write_text("thing = 1\n" * (MAX_LINES + 1) + "def g():\n    import condense.core.c\n")
    (pkg / "core" / "c.py").write_text("def h():\n    from condense.tasks import m\n")
    monkeypatch.setitem(globals(), "PACKAGE_DIR", pkg)
    imports = {(i.importer, i.imported, i.module_level) for i in _imports(_modules())}
    assert imports == {("condense.core.a", "condense.core.b", True),
                       ("condense.core.b", "condense.core.a", True),
                       ("condense.core.b", "condense.tasks.m", False),
                       ("condense.tasks.m", "condense.core.c", False),
                       ("condense.core.c", "condense.tasks.m", False)}
    edges = _edges(module_level_only=True)
    assert _cycles(edges) == [["condense.core.a", "condense.core.b"]]
    assert _closed_path(["condense.core.a", "condense.core.b"], edges) == [
        "condense.core.a", "condense.core.b", "condense.core.a"]
    assert _cycles(_edges(module_level_only=False)) == [["condense.core.a", "condense.core.b"],
                                                         ["condense.core.c", "condense.tasks.m"]]
    for check, expected in ((test_no_import_cycle, "condense.core.a -> condense.core.b -> condense.core.a"),
                            (test_no_import_cycle_through_function_level_imports, "condense.core.c"),
                            (test_no_upward_import, "condense.core.b (rank 1) -> condense.tasks.m (rank 4)"),
                            (test_no_module_over_the_line_limit, "condense/tasks/m.py: 403 lines")):
        try:
            check()
        except AssertionError as exc:
            assert expected in str(exc), str(exc)
        else:
            raise AssertionError(f"{check.__name__} passed on a package that breaks it")
