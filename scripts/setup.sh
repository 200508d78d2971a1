#!/usr/bin/env bash
# Installs what Sealift needs on a Debian 12 machine: the Debian packages (Docker engine, the
# CNCF distribution registry, skopeo, busybox-static, HAProxy, Chromium for the fleet page's
# browser test, the tools the operator pages use, and zstd and casync, which the delta benchmark
# compares with), then a virtualenv in .venv with Sealift and its development tools. Safe to run
# again: it installs only what is missing.
# Sourced by scripts/example.sh and scripts/test.sh; exports SEALIFT_PYTHON.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

packages=(python3 python3-venv git openssl apache2-utils curl jq docker.io docker-registry skopeo busybox-static iproute2 ca-certificates systemd tini haproxy chromium fonts-dejavu-core zstd casync)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -q >/dev/null
  # the package scripts try to start services through systemd; the tests start their own
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="$repo/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv"
fi
stamp="$venv/.sealift-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  echo "setup: installing Sealift and its tools into $venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo[dev]"
  touch "$stamp"
fi
export SEALIFT_PYTHON="$venv/bin/python"
export PATH="$venv/bin:$PATH"
