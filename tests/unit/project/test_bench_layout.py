"""bench/ stays a set of thin entry points on one rig (issue 14): an entry point imports
only bench.rig and bench.common of bench, those two import no entry point, the product
never imports bench, and no bench module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SHARED = ("bench.rig", "bench.common")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _bench_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "bench" or n.startswith("bench."))
    return found


def _is_shared(name: str) -> bool:
    return any(name == s or name.startswith(s + ".") for s in SHARED) or name == "bench"


def _entry_points() -> list[Path]:
    return [p for p in sorted((REPO / "bench").rglob("*.py"))
            if p.name != "__init__.py" and p.relative_to(REPO / "bench").parts[0] not in
            ("rig", "common") and len(p.relative_to(REPO / "bench").parts) == 2]


def test_entry_points_import_only_the_rig_and_common() -> None:
    entry_points = _entry_points()
    assert len(entry_points) >= 15, "the walk found too few entry points: wrong root?"
    wrong = {}
    for path in entry_points:
        bad = {n for n in _bench_imports(path) if not _is_shared(n)
               and not n.startswith(_module(path))}  # a child script may import itself
        if bad:
            wrong[_module(path)] = sorted(bad)
    assert not wrong, wrong


def test_rig_and_common_import_no_entry_point() -> None:
    wrong = {}
    for folder in ("rig", "common"):
        for path in sorted((REPO / "bench" / folder).glob("*.py")):
            bad = {n for n in _bench_imports(path) if not _is_shared(n)}
            if bad:
                wrong[_module(path)] = sorted(bad)
    assert not wrong, wrong


def test_the_product_never_imports_bench() -> None:
    wrong = [str(p.relative_to(REPO)) for top in ("edge", "aggregator", "federation", "models")
             for p in (REPO / top).rglob("*.py") if _bench_imports(p)]
    assert not wrong


def test_no_bench_module_over_400_lines() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
             for p in (REPO / "bench").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 400} == {}
