#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), then the live tour on the bundled demo image:
# load it, history, create a container, mount it through unionfs, which layer each file comes
# from, copy-up, a whiteout, diff, commit, mount the new image, clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO .venv/bin/python -m mounttool.demo.tour "$@"
