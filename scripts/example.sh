#!/usr/bin/env bash
# The main job: builds the example application's bundles for every shipped hardware profile,
# verifies each, shows one, and writes them all to one removable medium. Needs no server.
# Installs what it needs first (scripts/setup.sh).
# Usage: scripts/example.sh [OUT_DIR]   (default: out/)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/out}
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"

PYTHON="$SEALIFT_PYTHON" "$repo/examples/vision-app/make-images.sh"
sealift build "$repo/examples/vision-app/sealift.yaml" --profile all --out "$out"
sealift verify "$out"/vision-app-*
sealift inspect "$out/vision-app-1.0.0-x86_64-cpu"
# one removable medium for every profile (shared blobs stored once), checked as it would be before it travels
rm -rf "$out/medium"
sealift export "$out"/vision-app-1.0.0-* --to "$out/medium"
sealift verify "$out/medium"
