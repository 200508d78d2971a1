"""The documented loop (scripts/fleet_loop.py) runs end to end: updates go down to an online and an
air-gapped device, a failing release is rolled back, and both devices' signed reports reach the
fleet database and page, one through two registry hops and one on a medium."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.realparts import require

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.docker
@pytest.mark.registry
def test_the_loop_script_carries_updates_down_and_reports_back(tmp_path: Path) -> None:
    for binary in ("dockerd", "docker-registry", "ip", "nsenter"):
        require(binary)
    done = subprocess.run([sys.executable, str(ROOT / "scripts/fleet_loop.py"), "--out", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["device_a"]["running"] == "1.0.0" and summary["device_a"]["phase"] == "rolled-back"
    assert [hop["copied"] for hop in summary["hops"]] == [2, 2]  # A's two reports, through the DMZ to the office
    assert [(i["imported"], i["refused"]) for i in summary["imported"]] == [(2, []), (1, [])]  # registry, then B's medium
    fleet = summary["fleet"]
    assert fleet["running"] == {"plant-7 x86_64-cpu vision-app": {"1.0.0": 2}} and len(fleet["devices"]) == 2
    assert [f["fault"] for f in fleet["failing"]] == ["unhealthy"] and fleet["never_heard"] == []
    page = Path(summary["page"]).read_text()
    assert "unhealthy: container-health" in page and "Inference latency by release and profile" in page
