"""The import graph of the product packages has no circles, and the contract's control
messages depend on nothing but the contract.

Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions:
hiding an arrow there keeps the interpreter happy but leaves the two modules unable to
be understood, tested or moved apart (issue 14). The graph is read with ``ast``, so no
module is imported (and nothing heavy such as TenSEAL or onnxruntime is loaded).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("federation", "edge", "aggregator", "models")
# Control messages are a leaf of the contract (as Flower's FitIns/FitRes): both sides and
# the fuzzers parse them without pulling in anything else of the framework.
MESSAGES = "federation.messages"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports, anywhere in its body; ``from pkg import sub`` counts
    as an import of the submodule when ``sub`` is one, else of the package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    out: set[str] = set()
    for target in targets:
        # ``import a.b.c`` of a name we do not own (or a missing submodule): its longest
        # known prefix is what the import loads from this project
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:
        # iterative: a recursive walk of a long import chain could hit the recursion limit
        nonlocal counter
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(found)


def test_cycle_finder_sees_a_circle_and_a_chain() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_hidden_imports_are_seen(tmp_path: Path) -> None:
    source = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from federation import envelope\n"
              "def f():\n    from .errors import FederationError\n    import edge.gallery.store\n")
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = {"federation", "federation.envelope", "federation.errors", "federation.mod",
             "edge", "edge.gallery.store"}
    assert _imported("federation.mod", path, known) == {
        "federation.envelope", "federation.errors", "edge.gallery.store"}


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 100, "the walk found too few modules: wrong root?"
    found = cycles(graph)
    assert not found, "import cycles (TYPE_CHECKING and function-level imports count):\n" + \
        "\n".join("  " + " <-> ".join(c) for c in found)


def test_messages_import_only_the_contract() -> None:
    graph = import_graph()
    if MESSAGES not in graph:
        pytest.fail(f"{MESSAGES} is missing: the control messages belong in the contract")
    outside = sorted(m for m in graph[MESSAGES] if m.split(".")[0] != "federation")
    assert not outside, f"{MESSAGES} imports outside federation/: {outside}"
    # its own imports stay inside the contract too: a leaf, not a door to the framework
    reach, todo = set(), [MESSAGES]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in reach:
                reach.add(dep)
                todo.append(dep)
    assert all(m.split(".")[0] == "federation" for m in reach), sorted(reach)
