#!/usr/bin/env bash
# The test command (README): `bash scripts/test.sh [pytest args]`.
# Installs what is missing (scripts/setup.sh), then runs pytest from .venv.
# Without arguments (or with options only and no -m) it runs everything except the tests
# marked `slow`; name test files or node ids to run exactly those.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

has_path="" has_marker=""
for arg in "$@"; do
    case "$arg" in
        -m|-m*) has_marker=1;;
        -*) ;;
        *) if [ -e "${arg%%::*}" ]; then has_path=1; fi;;
    esac
done
if [ -z "$has_path" ] && [ -z "$has_marker" ]; then
    set -- -m "not slow" "$@"
fi

exec .venv/bin/python -m pytest -q "$@"
