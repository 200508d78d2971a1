#!/usr/bin/env bash
# The main job: builds the example application's bundles for every shipped hardware profile,
# verifies each, shows one, builds the demo site's overlay, and writes them all to one removable
# medium. Needs no server.
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
# the demo site's overlay: its values, and an API token sealed to a device enrolled here for the
# demonstration (its state in $out/demo-device; on a real device, `sealift-updater enroll` runs there)
rm -rf "$out/demo-device" "$out/devices.yaml" "$out/overlays"
sealift-updater --state-dir "$out/demo-device" enroll --site demo-site --profile x86_64-cpu > "$out/demo-device.json"
sealift devices add "$out/demo-device.json" --inventory "$out/devices.yaml"
VISION_API_TOKEN=$("$SEALIFT_PYTHON" -c 'import secrets; print(secrets.token_hex(16))') \
    sealift overlay build "$repo/examples/vision-app/sealift.yaml" --site demo-site --inventory "$out/devices.yaml" \
    --out "$out/overlays"
# one removable medium for every profile and the site (shared blobs stored once), checked as it would be before it travels
rm -rf "$out/medium"
sealift export "$out"/vision-app-1.0.0-* "$out"/overlays/* --to "$out/medium"
sealift verify "$out/medium"
