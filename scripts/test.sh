#!/usr/bin/env bash
# Runs every check: ruff, mypy (strict), then the test suite, which starts its own Docker engine
# and registries on loopback. Installs what it needs first (scripts/setup.sh).
# Usage: scripts/test.sh [PYTEST_ARGS...]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"
cd "$repo"

ruff check bundler updater tests scripts examples
mypy
pytest -ra "$@"
