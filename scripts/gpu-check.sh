#!/usr/bin/env bash
# A manual check on a real NVIDIA host, never part of CI: `sealift-updater detect` names the
# x86_64-nvidia profile, with its evidence, and says whether a container can reach the GPU here
# (the driver's /dev/nvidiactl; the engine's runtimes when it answers).
# Usage: scripts/gpu-check.sh [PYTHON]  (a Python that can import Sealift; default: the checkout's
# .venv, else python3 with the checkout on PYTHONPATH). Exits 0 when x86_64-nvidia is detected.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${1:-}
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; export PYTHONPATH="$repo"; fi
fi

echo "== the GPUs the driver sees"
nvidia-smi -L 2>&1 || echo "(nvidia-smi is not installed)"
echo "== sealift-updater detect --json"
rc=0
report=$("$python" -c 'from updater.cli import main; main()' detect --json) || rc=$?
echo "$report"
echo "(detect exited $rc: 0 usable, 5 accelerator not usable, 2 no profile matched)"
"$python" - "$report" <<'CHECK'
import json
import sys

envelope = json.loads(sys.argv[1])
report = envelope["result"]
if report is None:
    sys.exit(f"detect: {envelope['error']['message']}")
if report["profile"] != "x86_64-nvidia":
    sys.exit(f"detected {report['profile']}, expected x86_64-nvidia")
print("detected x86_64-nvidia from: " + "; ".join(item["proof"] for item in report["evidence"]))
access = report["accelerator"]
print("the GPU is usable by containers" if access["usable"] else "the GPU is not usable yet: " + "; ".join(access["missing"]))
CHECK
