"""The shell reads time only through its clock (mta/clock.py): no `time.*`, no
`loop.time()`, no timer or sleep of the event loop's anywhere else in mta/, so a test can
run any of it on virtual time (tests.fakes.FakeClock)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mta

MTA_DIR = Path(mta.__file__).parent
CLOCK = MTA_DIR / "clock.py"
MODULES = sorted(p for p in MTA_DIR.rglob("*.py") if p != CLOCK)
# Calls that read the time or wait for it, whatever object they are called on...
TIMING = frozenset({"time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "call_at", "call_later",
                    "sleep", "sleep_until", "utcnow", "now", "today"})
# ...unless that object is the clock (`clock`, `self._clock`, `self._time`, `self.time`).
CLOCK_NAMES = frozenset({"clock", "_clock", "_time", "time"})


def _reads(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {n}" for n in names if n.split(".")[0] == "time"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in TIMING:
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if isinstance(owner, ast.Name) and owner.id == "time":
                found.append(f"line {node.lineno}: time.{node.func.attr}()")
            elif name not in CLOCK_NAMES or (isinstance(owner, ast.Name) and owner.id == "asyncio"):
                found.append(f"line {node.lineno}: {ast.unparse(node.func)}()")
    return found


def test_modules_are_found() -> None:
    names = {p.relative_to(MTA_DIR).as_posix() for p in MODULES}
    assert {"engine.py", "destinations/delivery.py", "smtp/client.py", "settle/settler.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(MTA_DIR).as_posix())
def test_module_reads_time_only_through_the_clock(path: Path) -> None:
    found = _reads(ast.parse(path.read_text(encoding="utf-8")))
    assert not found, f"{path.name} reads the time or waits without the clock: {', '.join(found)}"


def test_the_checker_catches_what_it_should() -> None:
    sample = ast.parse("import time\nfrom time import monotonic\nloop.time()\nasyncio.sleep(1)\n"
                       "self._loop.call_at(1, f)\ndatetime.now()\nself._clock.now()\nclock.sleep(1)\n")
    assert [r.split(": ", 1)[1] for r in _reads(sample)] == [
        "import time", "import time", "loop.time()", "asyncio.sleep()", "self._loop.call_at()", "datetime.now()"]
