"""Streaming: building and verifying a bundle with a 2 GiB model stays under 100 MiB peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import project

LIMIT_KIB = 100 * 1024
GIB = 1 << 30


def peak_rss_kib(*args: str) -> int:
    """Run ``sealift ARGS`` in a child and return the child's own peak RSS."""
    proc = subprocess.Popen([sys.executable, "-m", "bundler", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, stderr
    return int(usage.ru_maxrss)


@pytest.mark.parametrize("kind", ["incompressible", "compressible"])
def test_two_gib_model_builds_and_verifies_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    spec = project(tmp_path / "src")
    model = tmp_path / "src/models/int8.bin"
    with open(model, "wb") as f:
        if kind == "compressible":
            f.truncate(2 * GIB)  # zeros: goes through the zstd path
        else:
            block = os.urandom(1 << 20)
            for i in range(2048):
                f.write(block[i % 7 :] + block[: i % 7])  # incompressible samples: copied as is
    out = tmp_path / "out"
    build_rss = peak_rss_kib("build", str(spec), "--out", str(out), "--profile", "x86_64-cpu", "--format", "tar")
    verify_rss = peak_rss_kib("verify", str(out / "demo-1.2.0-x86_64-cpu.tar"))
    assert build_rss < LIMIT_KIB, f"build peaked at {build_rss} KiB"
    assert verify_rss < LIMIT_KIB, f"verify peaked at {verify_rss} KiB"
    size = (out / "demo-1.2.0-x86_64-cpu.tar").stat().st_size
    assert (size > 2 * GIB) == (kind == "incompressible")
