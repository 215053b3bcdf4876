"""The layout holds: every import between folders is one the importing folder's docstring
allows, every folder says what it owns, and no folder or module outgrows its room.

A unit is a folder of edge/ or aggregator/ (``edge.serving``), a module directly inside
one of them (``edge.box``), or a whole contract package (``federation``, ``models``). Its
docstring (``__init__.py`` for a folder) ends with a ``May import: a, b.`` paragraph;
that paragraph is the rule, so the map a reader sees and the one the test enforces are
the same text (issue 14).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.import_graph import PACKAGES, REPO_ROOT, import_graph

SPLIT = ("edge", "aggregator")  # the two sides grouped into folders
NOTHING = "nothing of the project"
MAX_MODULES_PER_FOLDER = 12
MAX_MODULE_LINES = 400


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in SPLIT and len(parts) > 1 else parts[0]


def rule_file(unit: str) -> Path:
    path = REPO_ROOT / unit.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def allowed_imports(docstring: str) -> set[str] | None:
    """The units a ``May import: ...`` paragraph names; None when there is none."""
    match = re.search(r"^May import[^:\n]*:(.*?)(?:\n\s*\n|\Z)", docstring, re.M | re.S)
    if match is None:
        return None
    text = " ".join(match.group(1).split()).rstrip(".").strip()
    if text == NOTHING:
        return set()
    return {name.strip() for name in text.split(",")}


def rules() -> dict[str, set[str]]:
    units = {unit_of(m) for m in import_graph()}
    found: dict[str, set[str]] = {}
    for unit in sorted(units):
        path = rule_file(unit)
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        allowed = allowed_imports(docstring)
        if allowed is None:
            pytest.fail(f"{path.relative_to(REPO_ROOT)}: its docstring has no 'May import:' line")
        unknown = allowed - units
        assert not unknown, f"{path.relative_to(REPO_ROOT)} allows unknown units {unknown}"
        found[unit] = allowed
    return found


def test_the_rule_paragraph_is_read() -> None:
    doc = "Owns things.\n\nMay import: edge.errors, edge.vision,\nmodels.\n"
    assert allowed_imports(doc) == {"edge.errors", "edge.vision", "models"}
    assert allowed_imports("x\n\nMay import: nothing of the project.") == set()
    assert allowed_imports("no rule here") is None
    assert unit_of("edge.serving.hot_swap") == "edge.serving"
    assert unit_of("edge.box") == "edge.box"
    assert unit_of("federation.messages") == "federation"


def test_every_import_between_units_is_allowed() -> None:
    allowed = rules()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if unit_of(target) != unit_of(module) and unit_of(target) not in allowed[unit_of(module)]
    )
    assert not wrong, "imports the importing folder's 'May import:' line does not allow:\n" + \
        "\n".join("  " + w for w in wrong)


def test_the_allowed_imports_run_one_way() -> None:
    """No two units may each import the other, even if both lines allow it: a circle of
    folders is a circle of modules waiting to happen."""
    allowed = rules()
    both = sorted({tuple(sorted((a, b))) for a, deps in allowed.items() for b in deps
                   if a in allowed.get(b, set())})
    assert not both, f"units allowed to import each other: {both}"


def test_no_folder_is_a_warehouse() -> None:
    crowded = {}
    for package in (*PACKAGES, "bench"):
        for folder in [REPO_ROOT / package, *(p for p in (REPO_ROOT / package).rglob("*")
                                              if p.is_dir() and (p / "__init__.py").exists())]:
            modules = [p for p in folder.glob("*.py")
                       if p.name not in ("__init__.py", "__main__.py")]
            if len(modules) > MAX_MODULES_PER_FOLDER + 4:  # "about 12"; the kiosk's views count
                crowded[str(folder.relative_to(REPO_ROOT))] = len(modules)
            if folder.parent == REPO_ROOT and len(modules) > MAX_MODULES_PER_FOLDER:
                crowded[str(folder.relative_to(REPO_ROOT))] = len(modules)
    assert not crowded, f"folders with too many modules directly inside: {crowded}"


def test_no_module_over_the_line_limit() -> None:
    roots = [REPO_ROOT / p for p in (*PACKAGES, "bench")]
    long = {str(p.relative_to(REPO_ROOT)): n for root in roots for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by responsibility): {long}"


def test_test_modules_share_rigs_only_through_tests_support() -> None:
    """A test module imports rigs from tests/support, never another test module or a
    conftest: a test file can then be moved, renamed or run alone."""
    tests_root = REPO_ROOT / "tests"
    wrong = []
    for path in sorted(tests_root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("tests.") and not name.startswith("tests.support."):
                    wrong.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_tests_are_filed_by_level() -> None:
    tests_root = REPO_ROOT / "tests"
    levels = {"unit", "integration", "e2e", "browser"}
    stray = [str(p.relative_to(REPO_ROOT)) for p in tests_root.rglob("test_*.py")
             if p.relative_to(tests_root).parts[0] not in levels]
    assert not stray, f"test modules outside tests/<level>/: {stray}"
    for level in levels:
        assert (tests_root / level / "conftest.py").is_file(), f"tests/{level} has no conftest"


# The top level is the brief's layout plus the project's own files; anything else there
# is a scratch file swept into a commit (a helper's pid and logs once were, in 7c2c553).
TOP_LEVEL = {".ci", ".gitignore", "Makefile", "README.md", "pyproject.toml", "aggregator",
             "bench", "docs", "edge", "federation", "firmware_scripts", "models", "tests"}


def test_the_top_level_holds_only_the_layout() -> None:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked archive): no tracked files to read")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    stray = sorted({path.split("/")[0] for path in tracked} - TOP_LEVEL)
    assert not stray, f"files at the top level outside the layout: {stray}"
