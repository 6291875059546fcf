"""Code structure, read from the source (AST, nothing imported): no import cycles between project modules, and
no module or function that has grown past what one reader holds in their head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "tasks", "flows", "infra")  # importable packages
SCRIPTS = ("benchmarks",)  # scripts run as `python benchmarks/x.py`: siblings import each other by bare name
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 60


def _files(roots: tuple[str, ...]) -> list[Path]:
    return sorted(p for r in roots for p in (REPO / r).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Project modules that `path` imports, at module level or inside functions; `from x import y` counts as an
    import of x.y when that is a module, else of x (a package's __init__ runs either way)."""
    is_package = path.name == "__init__.py"
    script_dir = name.rpartition(".")[0] if name.split(".")[0] in SCRIPTS else None
    out: set[str] = set()

    def add(target: str) -> None:
        if script_dir and f"{script_dir}.{target}" in modules:
            target = f"{script_dir}.{target}"
        if target in modules:
            out.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, *([base] if base else [])])
            if script_dir and f"{script_dir}.{base}" in modules:
                base = f"{script_dir}.{base}"
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                add(sub if sub in modules else base)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in _files(PACKAGES + SCRIPTS)}
    modules = set(files)
    return {name: _imports(path, name, modules) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, listed sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _path_within(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle through the first module of `comp`, for the failure message."""
    members, start = set(comp), comp[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & members):
            if w == start:
                return [*path, start]
            if w not in seen:
                seen.add(w)
                paths.append([*path, w])
    return comp


def test_the_cycle_finder_finds_cycles_through_function_level_and_submodule_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _path_within(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pkg import sub\n    from pkg.other import thing\n    from . import rel\n")
    assert _imports(src, "pkg.m", {"pkg", "pkg.sub", "pkg.other", "pkg.rel", "pkg.m"}) == {
        "pkg.sub", "pkg.other", "pkg.rel"}


def test_no_import_cycles_between_project_modules():
    graph = import_graph()
    assert {"flows.cli", "components.judge", "components.lineage"} <= set(graph)  # the walk saw the tree
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        f"{' -> '.join(_path_within(graph, c))}  (strongly connected: {', '.join(c)})" for c in found)


def test_no_module_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in _files(PACKAGES + SCRIPTS)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _long_functions(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:  # def line to last line
                out.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    return out


@pytest.mark.parametrize("root", PACKAGES + SCRIPTS)
def test_no_function_over_60_lines(root):
    long = _long_functions(_files((root,)))
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
