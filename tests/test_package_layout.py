"""The package's shape, read from its source: no import cycle, verl imported only by the integration.

Imports are collected statically (``ast``), inside functions too, so a lazy import counts as much as a
top-level one. A package's ``__init__`` counts as the module named by the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.blocked_imports import blocking
from support.docs_tables import docs_tables

PACKAGE = Path(__file__).resolve().parents[1] / "sophiavl_verl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the modules it imports (any package, fully qualified)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = targets
    return graph


def _internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph restricted to the package's own modules (``from pkg import name`` -> pkg or pkg.name)."""
    edges = {}
    for name, targets in graph.items():
        edges[name] = set()
        for target in targets:
            while target and target not in graph:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges``, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    assert _cycle(_internal(_imports())) is None, " -> ".join(_cycle(_internal(_imports())))


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_integration_imports_verl_and_the_core_imports_no_tool():
    graph = _imports()
    verl_users = sorted(name for name, targets in graph.items()
                        if any(t == "verl" or t.startswith("verl.") for t in targets))
    assert verl_users and all(name.startswith("sophiavl_verl.integration") for name in verl_users), verl_users
    core = [name for name in graph if not name.startswith(("sophiavl_verl.integration", "sophiavl_verl.tools"))]
    for name in core:
        outside = sorted(t for t in graph[name] if t.startswith(("sophiavl_verl.integration", "sophiavl_verl.tools")))
        assert not outside, f"the core module {name} imports {outside}"


def test_the_integration_imports_no_tool():
    """Tools (command lines, the CPU run, the tiny models) build on the integration, never the other way round: the
    plugin, its CPU backend included, is what verl loads in every process."""
    graph = _imports()
    wrong_way = {}
    for name in (name for name in graph if name.startswith("sophiavl_verl.integration")):
        if tools := sorted(t for t in graph[name] if (t + ".").startswith("sophiavl_verl.tools.")):
            wrong_way[name] = tools
    assert not wrong_way, f"integration modules import tools: {wrong_way}"


def test_the_readmes_public_api_imports_without_verl():
    """The README's "Public Python API" block runs as written, on a machine where verl cannot be imported."""
    import re
    import subprocess
    import sys

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Public Python API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    blocker = blocking("verl")
    result = subprocess.run([sys.executable, "-c", blocker + block + "print('ok')"], capture_output=True, text=True,
                            timeout=300, cwd=PACKAGE.parent)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("package", sorted(p.parent.relative_to(PACKAGE.parent).as_posix()
                                           for p in PACKAGE.rglob("__init__.py")))
def test_each_packages_docstring_lists_exactly_its_modules(package):
    """The lists docs/DESIGN.md's map is generated from cannot drift from the files."""
    folder = PACKAGE.parent / package
    files = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    files |= {f"{p.parent.name}/" for p in folder.glob("*/__init__.py")}
    assert set(docs_tables()["module_listing"](folder)) == files


#: Modules allowed over ~600 lines, with the reason their own docstring gives: none today.
LONG_MODULES: dict[str, str] = {}


def test_no_module_is_over_600_lines_without_a_reason():
    long = {p.relative_to(PACKAGE.parent).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert set(long) <= set(LONG_MODULES), long
