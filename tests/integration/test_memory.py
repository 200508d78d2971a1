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


# The child reports its own peak (VmHWM: the high-water mark of the memory it mapped after exec).
# The rusage of wait4 would not do: a child started with vfork takes over the parent's high-water mark
# at exec, so it would report this test process's peak whenever that is the larger.
_REPORT_PEAK = """
import atexit, os, runpy, sys

def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["SEALIFT_TEST_PEAK"], "w") as out:
        out.write(peak)

atexit.register(report)
sys.argv[0] = "sealift"
runpy.run_module("bundler", run_name="__main__", alter_sys=True)
"""


def peak_rss_kib(*args: str, report: Path) -> int:
    """Run ``sealift ARGS`` in a child and return the child's own peak RSS."""
    done = subprocess.run([sys.executable, "-c", _REPORT_PEAK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "0", "SEALIFT_TEST_PEAK": str(report)}, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return int(report.read_text())


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
    build_rss = peak_rss_kib("build", str(spec), "--out", str(out), "--profile", "x86_64-cpu", "--format", "tar",
                             report=tmp_path / "build.peak")
    verify_rss = peak_rss_kib("verify", str(out / "demo-1.2.0-x86_64-cpu.tar"), report=tmp_path / "verify.peak")
    assert build_rss < LIMIT_KIB, f"build peaked at {build_rss} KiB"
    assert verify_rss < LIMIT_KIB, f"verify peaked at {verify_rss} KiB"
    size = (out / "demo-1.2.0-x86_64-cpu.tar").stat().st_size
    assert (size > 2 * GIB) == (kind == "incompressible")
