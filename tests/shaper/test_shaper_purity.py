"""shaper/ decides, mta/ does I/O: keep the core free of I/O and of the clock.

Every module under shaper/ is imported (so a broken or missing one fails
here), then its source is read with ``ast`` and every import checked against
the modules that would let it talk to the world or read the time.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import shaper

# The I/O stack, the clock, and the libraries that only the shell may use.
FORBIDDEN = frozenset(
    {
        "asyncio",
        "socket",
        "time",
        "aio_pika",
        "aiormq",
        "aiosmtplib",
        "dns",
        "dkim",
        "prometheus_client",
        "uvloop",
        "ssl",
        "selectors",
        "subprocess",
        "threading",
        "multiprocessing",
        "concurrent",
    }
)
# Clock reads that need no forbidden import (datetime.now(), date.today()).
CLOCK_CALLS = frozenset({"now", "utcnow", "today", "monotonic", "perf_counter", "time_ns"})

SHAPER_DIR = Path(shaper.__file__).parent
MODULES = sorted(
    ["shaper"] + [m.name for m in pkgutil.walk_packages(shaper.__path__, prefix="shaper.")]
)


def _source(module: str) -> Path:
    parts = module.split(".")[1:]
    path = SHAPER_DIR.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """Top-level module names imported anywhere in the tree, with line numbers,
    including ``importlib.import_module("x")`` and ``__import__("x")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_modules_are_found() -> None:
    # Guards the test itself: an empty list would make the others pass vacuously.
    assert {
        "shaper.units",
        "shaper.retry",
        "shaper.replies",
        "shaper.limiter",
        "shaper.window",
        "shaper.state",
    } <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_nothing_forbidden(module: str) -> None:
    importlib.import_module(module)
    tree = ast.parse(_source(module).read_text(encoding="utf-8"), filename=str(_source(module)))
    bad = [f"line {line}: {name}" for line, name in _imported(tree) if name in FORBIDDEN]
    assert not bad, f"{module} imports what only mta/ may: {', '.join(bad)}"


@pytest.mark.parametrize("module", MODULES)
def test_module_never_reads_the_clock(module: str) -> None:
    tree = ast.parse(_source(module).read_text(encoding="utf-8"))
    calls = [
        f"line {node.lineno}: .{node.func.attr}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_CALLS
    ]
    assert (
        not calls
    ), f"{module} reads the clock; take `now` as an argument instead: {', '.join(calls)}"


def test_the_checker_catches_what_it_should() -> None:
    sample = ast.parse(
        "import time\nfrom asyncio import sleep\nimport dns.resolver\n"
        "importlib.import_module('socket')\nfrom . import units\n"
    )
    assert [name for _, name in _imported(sample)] == ["time", "asyncio", "dns", "socket"]
