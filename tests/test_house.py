"""The house: the edge and the teacher meet only in ``shared``.

An edge installs without the teacher's dependencies in mind, and the teacher scores what
edges run through ``shared`` alone; an import from one side into the other would tie
them back together. The check reads every module's imports (with ``ast``, nothing is run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set[str]:
    """Top-level packages a module imports, anywhere in it (lazy imports included)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize(
    "side, forbidden",
    [("edge", {"teacher"}), ("teacher", {"edge"}), ("shared", {"edge", "teacher"})],
)
def test_no_side_imports_the_other(side, forbidden):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported(path) & forbidden)
        for path in sorted((ROOT / side).rglob("*.py"))
        if imported(path) & forbidden
    }
    assert offenders == {}


# The teacher's stages, lowest first: a stage may import those below it, never above.
FLOORS = {"data": 0, "release": 1, "serve": 2, "improve": 2, "train": 2, "console": 3}


def stage_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n.split(".")[1] for n in names if n.startswith("teacher.") and n.count(".") >= 1}
    return out & set(FLOORS)


def test_the_teachers_stages_import_only_downwards():
    assert {p.name for p in (ROOT / "teacher").iterdir() if (p / "__init__.py").is_file()} == set(
        FLOORS
    )
    upward = {}
    for stage, floor in FLOORS.items():
        for path in sorted((ROOT / "teacher" / stage).glob("*.py")):
            above = {s for s in stage_imports(path) - {stage} if FLOORS[s] >= floor}
            if above:
                upward[str(path.relative_to(ROOT))] = sorted(above)
    assert upward == {}
