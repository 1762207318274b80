"""Only mta/broker/ talks to the broker libraries: every aio-pika, aiormq and pamqp quirk,
and the translation of their exceptions (mta.broker.errors), is found in that folder, and
nothing else in mta/ imports them or catches their types."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mta

BROKER_LIBRARIES = frozenset({"aio_pika", "aiormq", "pamqp"})
MTA_DIR = Path(mta.__file__).parent
OUTSIDE = sorted(p for p in MTA_DIR.rglob("*.py") if MTA_DIR / "broker" not in p.parents)


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(MTA_DIR)))
def test_no_module_outside_mta_broker_imports_a_broker_library(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    assert [(line, name) for line, name in _imported(tree) if name in BROKER_LIBRARIES] == []


def test_the_modules_outside_are_found() -> None:
    names = {str(p.relative_to(MTA_DIR)) for p in OUTSIDE}
    assert {"engine.py", "cli.py", "settle/settler.py", "intake/window.py", "ops/control.py"} <= names
