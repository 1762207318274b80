"""Small modules and functions, as the issue that cut the house into stages asked: no
module of mta/ or shaper/ over 400 lines, no function over 50. A module or function that
grows past them is split where its subject divides, not squeezed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mta
import shaper

MAX_MODULE, MAX_FUNCTION = 400, 50
MODULES = sorted(p for package in (mta, shaper) for p in Path(package.__file__).parent.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(Path(mta.__file__).parent.parent).as_posix()


def _long_functions(tree: ast.AST) -> list[str]:
    return [f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION]


def test_modules_are_found() -> None:
    assert {"mta/engine.py", "mta/destinations/delivery.py", "shaper/destination.py"} <= set(map(_name, MODULES))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_and_its_functions_are_small(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE, f"{_name(path)}: {lines} lines"
    assert not _long_functions(ast.parse(source)), f"{_name(path)}: {', '.join(_long_functions(ast.parse(source)))}"


def test_the_checker_catches_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    assert _long_functions(ast.parse(f"def f():\n{body}\n")) == [f"f (line 1): {MAX_FUNCTION + 1} lines"]
    assert _long_functions(ast.parse("def g():\n    return 1\n")) == []
