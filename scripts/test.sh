#!/usr/bin/env bash
# The test command (README): `bash scripts/test.sh [pytest args]`.
# Installs what is missing (scripts/setup.sh), then runs pytest from .venv.
# Without arguments (or with options only and no -m) it runs everything except the tests
# marked `slow`; name test files or node ids to run exactly those.
# A run without named tests is spread over MTA_TEST_WORKERS processes (pytest-xdist, each
# with its own broker, dnsmasq and sinks; default 3, 0 = one process); most integration
# tests wait on timers, not on the CPU. Named tests run in one process unless -n is given.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

has_path="" has_marker="" has_workers=""
for arg in "$@"; do
    case "$arg" in
        -m|-m*) has_marker=1;;
        -n|-n*|--numprocesses*|no:xdist|-pno:xdist) has_workers=1;;
        -*) ;;
        *) if [ -e "${arg%%::*}" ]; then has_path=1; fi;;
    esac
done
if [ -z "$has_path" ] && [ -z "$has_marker" ]; then
    set -- -m "not slow" "$@"
fi
workers=${MTA_TEST_WORKERS:-3}
if [ -z "$has_path" ] && [ -z "$has_workers" ] && [ "$workers" != 0 ]; then
    # one test at a time to each worker, in the order of tests/testbed/schedule.py
    # (longest first), so that no worker is left with a long tail of queued tests
    set -- -n "$workers" --dist load --maxschedchunk 1 "$@"
fi

exec .venv/bin/python -m pytest -q "$@"
