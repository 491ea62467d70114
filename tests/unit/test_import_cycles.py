"""No import cycle inside `service/`, `export/` or `bench/`: a module graph with cycles cannot be read bottom-up, and a
lazy import inside a function (the usual way out) hides the cycle rather than removing it, so imports at any
depth count; those under `if TYPE_CHECKING:` do not run and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CYCLE_FREE = ("service", "export", "bench")


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """The package's modules that `module` imports, at any depth outside `if TYPE_CHECKING:`."""
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module
            if node.level:
                package = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                if path.name == "__init__.py" and node.level > 1:
                    package = module.split(".")[: -(node.level - 1)]
                base = ".".join([*package, node.module])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {t for t in targets if t in known and t != module}


def _cycles(package: str) -> list[list[str]]:
    known = _modules(package)
    graph = {m: _imports(p, m, known) for m, p in known.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    cycles, state, stack = [], dict.fromkeys(graph, 0), []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state[t] == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif state[t] == 0:
                walk(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            walk(m)
    return cycles


@pytest.mark.parametrize("package", CYCLE_FREE)
def test_no_import_cycle(package: str) -> None:
    cycles = _cycles(package)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
