#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), then runs the live tour on the bundled demo layers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO .venv/bin/python scripts/demo.py "$@"
