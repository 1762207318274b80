#!/usr/bin/env bash
# The demo (README): installs what is missing, then runs a private RabbitMQ, DNS server and
# SMTP sinks on loopback, the MTA, and a few hundred messages; prints what happened.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
