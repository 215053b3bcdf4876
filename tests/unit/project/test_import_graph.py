"""The import graph of the product packages has no circles, and the contract's control
messages depend on nothing but the contract.

Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions:
hiding an arrow there keeps the interpreter happy but leaves the two modules unable to
be understood, tested or moved apart (issue 14). The graph is read with ``ast``, so no
module is imported (and nothing heavy such as TenSEAL or onnxruntime is loaded).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.import_graph import (
    MESSAGES,
    _imported,
    cycles,
    import_graph,
)


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
