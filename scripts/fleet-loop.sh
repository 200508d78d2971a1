#!/usr/bin/env bash
# The whole loop on one machine (scripts/fleet_loop.py): build, sign, push and mirror the example,
# two devices install it (one online, one from a medium), a failing release is rolled back, the
# signed reports travel back through two registry hops and on the medium, and the fleet page is
# written (out/fleet-loop/fleet.html). Private Docker engines and registries, removed at the end.
# Installs what it needs first (scripts/setup.sh). Usage: scripts/fleet-loop.sh [--out DIR] [--json]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"
exec "$SEALIFT_PYTHON" "$repo/scripts/fleet_loop.py" "$@"
