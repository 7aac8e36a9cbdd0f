#!/usr/bin/env bash
# Installs everything unionfs and mounttool need on Debian/Ubuntu: the system packages (FUSE 3,
# its headers for building pyfuse3, kernel-overlay and fuse-overlayfs peers for the tests and
# benchmarks) and a virtualenv in .venv with the project and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# fuse3/libfuse3-dev/pkg-config/gcc/python3-dev build and run pyfuse3; fuse-overlayfs is the peer
# in benchmarks; git and attr are used by tests and benchmarks; docker-registry (the CNCF
# distribution server), skopeo, umoci, apache2-utils (htpasswd) and openssl serve the image and
# registry tests (real tools writing OCI layouts, docker archives and registries).
PACKAGES="fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr util-linux git
  fuse-overlayfs docker-registry skopeo umoci apache2-utils openssl"
missing=""
for pkg in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "setup: installing system packages:$missing"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  # Debian starts a registry service on :5000 when systemd runs; the tests start their own.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing unionfs and mounttool into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
