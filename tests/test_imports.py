"""Imports run one way: no cycle among the modules of sae/, kernels/ and activations/ at import time, kernels/
imports only torch, triton, the standard library and itself, activations/ never imports sae/, and nothing outside
tests/ imports from tests/. Read from the source with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sae", "kernels", "activations")
KERNELS_MAY_IMPORT = {"torch", "triton", "kernels"} | set(sys.stdlib_module_names)
NOT_SOURCE = {"tests", "runs", "build", "dist", "node_modules"}  # top-level folders that are not the project's code


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(body: list[ast.stmt], at_import_time: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of `body` that run (never those under `if TYPE_CHECKING:`); `at_import_time`: only
    those that run when the module is imported, not those inside functions."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not at_import_time:
                yield from _import_nodes(node.body, at_import_time)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _import_nodes(node.orelse, at_import_time)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _import_nodes([n for n in getattr(node, field, []) if isinstance(n, ast.AST)], at_import_time)


def imported_names(path: Path, at_import_time: bool) -> set[str]:
    """Dotted names `path` imports; `from a.b import c` gives a.b.c, and a.b too unless c is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names: set[str] = set()
    for node in _import_nodes(tree.body, at_import_time):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
        submodules = {f"{base}.{alias.name}" for alias in node.names}
        names.update(submodules)
        if not all(_is_module(m) for m in submodules):  # `from pkg import mod` needs mod, not pkg's own names
            names.add(base)
    return names


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph(at_import_time: bool) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's own __init__ running first is not an edge)."""
    modules = package_modules()
    return {m: {n for n in imported_names(p, at_import_time) if n in modules and n != m} for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walk_finds_the_imports_it_should():
    graph = import_graph(at_import_time=True)
    assert "sae.model" in graph["sae.train"] and "kernels" in graph["sae.model"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    lazy = import_graph(at_import_time=False)
    assert "kernels.select_triton" in lazy["kernels"]  # imported inside a function of kernels/__init__.py


def test_no_import_cycle_at_import_time():
    cycle = find_cycle(import_graph(at_import_time=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_even_through_imports_inside_functions():
    """A lazy import must not be what keeps a cycle from failing at import time."""
    graph = import_graph(at_import_time=False)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle through a lazy import: " + " -> ".join(cycle or [])


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_import_only_torch_triton_and_the_standard_library(path):
    outside = sorted(n for n in imported_names(path, at_import_time=False) if _top(n) not in KERNELS_MAY_IMPORT)
    assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


def test_activations_never_import_sae():
    found = {
        str(p.relative_to(ROOT)): sorted(n for n in imported_names(p, at_import_time=False) if _top(n) == "sae")
        for p in (ROOT / "activations").rglob("*.py")
    }
    assert not {p: n for p, n in found.items() if n}


def project_sources() -> list[Path]:
    """Every .py file of the project outside tests/ (hidden folders such as virtual environments left out)."""
    return sorted(
        p
        for p in ROOT.rglob("*.py")
        if not any(part.startswith(".") for part in p.relative_to(ROOT).parts) and p.relative_to(ROOT).parts[0] not in NOT_SOURCE
    )


def _puts_tests_on_sys_path(tree: ast.AST) -> bool:
    """A statement that touches sys.path and names a 'tests' folder (how a script reaches a test helper)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.Expr, ast.AugAssign)) and "sys.path" in ast.unparse(node):
            if any(
                isinstance(c, ast.Constant) and isinstance(c.value, str) and "tests" in c.value.split("/") for c in ast.walk(node)
            ):
                return True
    return False


def test_nothing_outside_tests_imports_from_tests():
    test_modules = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {"tests"}
    bad = {}
    for path in project_sources():
        names = {_top(n) for n in imported_names(path, at_import_time=False)} & test_modules
        if names or _puts_tests_on_sys_path(ast.parse(path.read_text())):
            bad[str(path.relative_to(ROOT))] = sorted(names) or ["sys.path"]
    assert not bad, f"these import from tests/: {bad}"
