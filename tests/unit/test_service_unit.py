"""The systemd unit the updater ships as: hardened, and held there by systemd's own assessment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "examples" / "systemd" / "sealift-updater.service"
MOUNT = UNIT.with_name("var-lib-sealift-run.mount")
EXPOSURE_AT_MOST = 2.5  # docs/updater.md; 9.4 (UNSAFE) before the unit was hardened


def _analyze(*args: str) -> str:
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian package systemd)")
        pytest.skip("needs systemd-analyze")
    done = subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def test_systemd_rates_the_unit_no_worse_than_documented() -> None:
    report = _analyze("security", "--offline=yes", str(UNIT))
    found = re.search(r"Overall exposure level for sealift-updater\.service: ([0-9.]+)", report)
    assert found is not None, report[-2000:]
    assert float(found.group(1)) <= EXPOSURE_AT_MOST, report


def test_the_unit_reports_readiness_counts_start_time_and_mounts_the_secrets_tmpfs_before_it() -> None:
    unit = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert unit["Type"] == "notify" and int(unit["TimeoutStartSec"]) > 0 and int(unit["WatchdogSec"]) > 0
    assert unit["Requires"] == MOUNT.name and MOUNT.name in unit["After"]
    mount = dict(line.split("=", 1) for line in MOUNT.read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert (mount["Type"], mount["Where"]) == ("tmpfs", "/var/lib/sealift/run")
    assert f"{unit['StateDirectory']}/run" == mount["Where"].removeprefix("/var/lib/")


def test_the_system_calls_the_updater_makes_stay_allowed() -> None:
    """Each filter line adds to or takes from the allow list in order: what the updater calls must be
    allowed after the last line that names its group (fchown, for opened secrets, is in @privileged)."""
    needed = {"@chown": "fchown of opened secrets", "@file-system": "slots and state", "@network-io": "engine and registry"}
    lines = [line.split("=", 1)[1].split() for line in UNIT.read_text().splitlines() if line.startswith("SystemCallFilter=")]
    groups = {g: set(_analyze("syscall-filter", g).split()) for g in ("@privileged", "@resources", "@system-service")}
    for group, why in needed.items():
        allowed = False
        for words in lines:
            deny = words[0].startswith("~")
            named = {w.lstrip("~") for w in words}
            if group in named or any(group in groups.get(n, set()) for n in named):
                allowed = not deny
        assert allowed, f"{group} ({why}) is filtered out"
    assert "ExecStartPre" not in UNIT.read_text()  # a failed recovery must not keep the service, and the fix, from starting
