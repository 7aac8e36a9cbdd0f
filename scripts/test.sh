#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), then runs the whole suite: lint, types, tests.
# Tests that need FUSE or root run when they can and skip with the reason when they cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q "$@"
