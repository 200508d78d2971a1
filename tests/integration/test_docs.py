"""The operator pages, followed as written: every ```sh block of docs/site-mirror.md and then of
docs/device-install.md, in order, by scripts/docs_check.py, as root in a private mount and PID
namespace (writes to /etc, /srv, /opt, /usr/local, /var/lib, /root and /tmp land in a tmpfs; every
process the pages start, the registries included, dies with the namespace).

How the commands are covered (scripts/docs_check.py says more):
- run for real: openssl, htpasswd, the registries' configuration and a real `docker-registry` serving it
  (TLS, htpasswd, read-only side), curl and jq against its API, `garbage-collect`, `sealift` (build,
  repo, push, login, mirror sync, pull, verify), pip and the device's virtualenv, `sealift-updater`
  (login over TLS, trust init, enroll, status with the configuration file, detect);
- apt-get: `update` is not run; `install` is checked with dpkg-query (scripts/setup.sh installs them);
- systemctl: each unit is checked with `systemd-analyze verify`; `start` and `enable --now` run what
  systemd would (a mount unit's mount, the ExecStart as its User= with its Environment= and drop-ins;
  a oneshot in the foreground); docker.service is not started (no Docker engine here: installing a
  release is tests/integration/test_device_package.py's), so sealift-updater.service's ExecStart must
  stop at once with the engine's exit code, 6, and its log must name the engine; timers are checked,
  not scheduled (the page starts the sync service itself);
- journalctl -u: what the unit's process wrote.
After the pages the script also checks what they claim: the device user reads only the read-only
side, which refuses pushes and deletes (405), and the sync user is a stranger there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import docs_check
from tests.realparts import processes_mentioning, require, unavailable

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 60


@pytest.mark.parametrize("page", docs_check.PAGES)
def test_every_command_of_the_page_is_in_a_block_the_check_runs(page: str) -> None:
    found = docs_check.fences(page)
    assert {block.info for block in found} <= {"sh", "text"}, [(b.line, b.info) for b in found if b.info not in ("sh", "text")]
    runnable = docs_check.blocks(page)
    assert runnable and all(block.text.strip() for block in runnable)
    assert not [b.line for b in runnable if b.text.lstrip().startswith("$ ")], "a prompt is not a command"
    assert not [b.line for b in runnable if "sudo " in b.text], "the pages run as root: sudo would bypass the check's stand-ins"


@pytest.mark.registry
def test_the_pages_run_as_written_on_this_machine() -> None:
    if os.geteuid() != 0:
        unavailable("the docs check needs root (a private mount namespace, mounts, services as their User=)")
    for tool in docs_check.TOOLS:
        require(tool)
    assert not docs_check.busy_ports(), f"127.0.0.1 ports {docs_check.PORTS} must be free for the pages' registries"
    written = [Path(p) for p in ("/etc/sealift-mirror", "/srv/sealift-mirror", "/etc/sealift", "/opt/sealift", "/tmp/for-devices")]
    there_before = {path for path in written if path.exists()}
    running_before = processes_mentioning("/etc/sealift-mirror/")
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_check.py")], cwd=ROOT, capture_output=True, text=True,
                          timeout=docs_check.TIMEOUT_S + 30, check=False)
    took = time.monotonic() - began
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    ran = sum(len(docs_check.blocks(page)) for page in docs_check.PAGES)
    assert f"{ran} blocks of {len(docs_check.PAGES)} pages ran" in output
    assert took < BUDGET_S, f"the docs check took {took:.0f} s (budget {BUDGET_S} s)"
    # everything it started died with its namespace, and nothing it wrote reached this machine
    assert not set(processes_mentioning("/etc/sealift-mirror/")) - set(running_before), "a registry of the pages outlived the check"
    assert not docs_check.busy_ports()
    assert {path for path in written if path.exists()} == there_before
