"""The package's modules import each other without a cycle, not even a type-only one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lm_heads"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # ``from lm_heads.data import cache`` imports the submodule too.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # A package's __init__ runs before any of its submodules: importing a submodule imports it.
    closed = set()
    for target in found:
        parts = target.split(".")
        closed.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in closed & modules if m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]], ignore_packages: bool = True) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or ``None``. A package's own ``__init__`` importing
    its submodules is not a cycle (the submodule's import of the package finds it initialising);
    ``ignore_packages`` drops those edges from submodules to their parent packages."""
    edges = {
        node: {t for t in targets if not (ignore_packages and node.startswith(t + "."))}
        for node, targets in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_finds_a_type_only_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_head_modules_answer_to_their_paths_before_the_heads_package() -> None:
    import importlib
    import pickle

    from lm_heads.heads import MODULES

    for name in MODULES:
        old = importlib.import_module(f"lm_heads.{name}")
        assert old is importlib.import_module(f"lm_heads.heads.{name}"), name
    from lm_heads.adaptive import AdaptiveSoftmaxHead  # type: ignore[import-not-found]

    import lm_heads

    assert AdaptiveSoftmaxHead is lm_heads.AdaptiveSoftmaxHead
    # A head pickled by 0.3 names its class by the old path.
    assert pickle.loads(b"clm_heads.adaptive\nAdaptiveSoftmaxHead\n.") is AdaptiveSoftmaxHead
