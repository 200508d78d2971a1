"""Deltas inside large blobs: what a chunk delta moves, against the changed bytes, `zstd --patch-from`
and casync on the same files, and how long a device takes to rebuild the blob, against `cp`.

Cases (sizes scale with --delta-mib, default 1024):
(a) a model whose last 5% changes in place, as a retrained head would;
(b) a model with 1% of its bytes changed in scattered 64 KiB runs;
(c) an image layer (a tar of 30 files, 300 MiB at the default size) with one 10 MiB file replaced
    by one a little longer;
(d) a model that changes entirely;
(e) a model Sealift stores compressed (zstd level 3: weights that compress, 64 MiB at the default
    size), 1% of its bytes changed in place in scattered 64 KiB runs: the changed bytes are those of
    the model, the delta is of what is stored.
A chunk delta moves its pack and its index over every hop (a registry, a mirror, a medium: the
same two blobs), so one figure stands for all of them.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundler.chunking import chunk_delta  # noqa: E402

MIB = 1 << 20
_REPEATS = 3  # rebuild and cp timings: the median of this many, interleaved


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        for done in range(0, size, MIB):
            out.write(os.urandom(min(MIB, size - done)))


def _overwrite(path: Path, runs: list[tuple[int, int]]) -> None:
    with open(path, "r+b") as out:
        for offset, length in runs:
            out.seek(offset)
            out.write(os.urandom(length))


def _layer(path: Path, files: list[bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, data in enumerate(files):
            info = tarfile.TarInfo(f"app/lib/part-{i:02d}.bin")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))


def make_cases(work: Path, size: int) -> dict[str, tuple[Path, Path, int]]:
    """(base, target, changed bytes) of each case."""
    rng = random.Random(18)
    cases = {}
    base = work / "model"
    _random_file(base, size)
    tail = size // 20
    for name, runs in (("a: last 5% changed", [(size - tail, tail)]),
                       ("b: 1% in scattered 64 KiB runs", [(rng.randrange(0, size - 65536) // 4096 * 4096, 65536)
                                                           for _ in range(size // 100 // 65536)])):
        target = work / f"model-{name[0]}"
        shutil.copyfile(base, target)
        _overwrite(target, runs)
        cases[name] = (base, target, sum(length for _, length in runs))
    part = max(size * 10 // 1024, MIB)  # 10 MiB at 1 GiB
    files = [os.urandom(part) for _ in range(30)]
    _layer(work / "layer", files)
    files[17] = os.urandom(part + 1234)
    _layer(work / "layer-c", files)
    cases["c: a layer, one file replaced"] = (work / "layer", work / "layer-c", part + 1234)
    whole = work / "model-d"
    _random_file(whole, size)
    cases["d: all changed"] = (base, whole, size)
    small = size // 16  # 64 MiB at 1 GiB
    runs = [(rng.randrange(0, small - 65536) // 4096 * 4096, 65536) for _ in range(max(small // 100 // 65536, 1))]
    model = bytearray(_weights(small))
    _compressed(work / "model-e", bytes(model))
    for offset, length in runs:
        model[offset:offset + length] = _weights(length)
    _compressed(work / "model-e2", bytes(model))
    cases["e: zstd-stored model, 1% changed"] = (work / "model-e", work / "model-e2", sum(length for _, length in runs))
    return cases


def _weights(size: int) -> bytes:
    """Bytes that compress as a model's weights do, a little: random, with the top two bits of each byte clear."""
    return (int.from_bytes(os.urandom(size), "little") & int.from_bytes(b"\x3f" * size, "little")).to_bytes(size, "little")


def _compressed(path: Path, data: bytes) -> None:
    """``data`` stored as Sealift stores a model that compression shrinks (bundler/payload.py: zstd level 3)."""
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data))


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def _timed(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


# in a process of its own, whose peak resident memory (VmHWM: this process's, not what a parent held
# before the exec, which ru_maxrss would report) is the rebuild's
_REBUILD = """
import re, sys, time
from pathlib import Path
from updater.chunks import read_index, rebuild
index = read_index(Path(sys.argv[1]).read_bytes(), "bench")
began = time.perf_counter()
with open(sys.argv[2], "rb") as base, open(sys.argv[3], "rb") as pack:
    rebuild(index, base, pack, Path(sys.argv[4]), what="bench", pack_checked=True)  # as a device: the pack was checked on arrival
took = time.perf_counter() - began
print(took, re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
"""


def one_case(work: Path, base: Path, target: Path, changed: int) -> dict[str, Any]:
    began = time.perf_counter()
    delta = chunk_delta(base, target, work / "pack", base_digest=_digest(base), target_digest=_digest(target))
    cut = time.perf_counter() - began
    (work / "index").write_bytes(delta.index)
    out = work / "rebuilt"
    src, dst = shlex.quote(str(target)), shlex.quote(str(out))
    rebuilds, copies, peaks = [], [], []
    for _ in range(_REPEATS):  # interleaved, each after a sync: the disk's write-back is this VM's noise
        os.sync()
        done = subprocess.run([sys.executable, "-c", _REBUILD, str(work / "index"), str(base), str(work / "pack"), str(out)],
                              check=True, capture_output=True, text=True, cwd=ROOT)
        took, rss_kib = (float(x) for x in done.stdout.split())
        rebuilds.append(took)
        peaks.append(rss_kib)
        assert _digest(out) == _digest(target)
        out.unlink()
        os.sync()
        copies.append(_timed(["sh", "-c", f"cp {src} {dst} && sync {dst}"]))  # the floor: a copy made durable, as a rebuild is
        out.unlink()
    rebuild_s, copy_s, rss_kib = statistics.median(rebuilds), statistics.median(copies), max(peaks)
    figures: dict[str, Any] = {"changed": changed, "pack": delta.pack_size, "index": len(delta.index), "chunks": delta.chunks,
                               "moved": delta.pack_size + len(delta.index), "cut_s": cut, "rebuild_s": rebuild_s, "cp_s": copy_s,
                               "rebuild_peak_rss_mib": rss_kib / 1024}
    patch_s = _timed(["zstd", "-q", "-f", "-3", "--long=31", f"--patch-from={base}", str(target), "-o", str(work / "patch")])
    figures.update(zstd_patch=(work / "patch").stat().st_size, zstd_patch_s=patch_s)
    if shutil.which("casync"):
        store = work / "castr"
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run(["casync", "make", f"--store={store}", str(work / "base.caibx"), str(base)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = {p: p.stat().st_size for p in store.rglob("*.cacnk")}
        subprocess.run(["casync", "make", f"--store={store}", str(work / "target.caibx"), str(target)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        added = sum(p.stat().st_size for p in store.rglob("*.cacnk") if p not in before)
        figures.update(casync=added + (work / "target.caibx").stat().st_size)
        shutil.rmtree(store, ignore_errors=True)
    return figures


def measure(size_mib: int = 1024, workdir: Path | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sealift-delta-", dir=workdir))
    try:
        print(f"generating the cases in {work} ...", file=sys.stderr)
        cases = make_cases(work, size_mib * MIB)
        results = {}
        for name, (base, target, changed) in cases.items():
            print(f"case {name} ...", file=sys.stderr)
            results[name] = one_case(work, base, target, changed)
        return {"size_mib": size_mib, "cases": results}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(figures: dict[str, Any]) -> None:
    print(f"deltas inside blobs, {figures['size_mib']} MiB blobs")
    print(f"{'case':34} {'changed':>9} {'moved':>9} {'x chg':>6} {'pack x':>6} {'index':>8} {'zstd -p':>9} {'casync':>9} "
          f"{'rebuild':>8} {'x cp':>5} {'RSS':>6}")
    def m(v: float) -> str:
        return f"{v / MIB:8.2f}M"

    for name, f in figures["cases"].items():
        print(f"{name:34} {m(f['changed'])} {m(f['moved'])} {f['moved'] / f['changed']:6.3f} {f['pack'] / f['changed']:6.3f} "
              f"{f['index'] / 1024:7.0f}K {m(f['zstd_patch'])} {m(f.get('casync', 0))} {f['rebuild_s']:7.2f}s "
              f"{f['rebuild_s'] / f['cp_s']:5.2f} {f['rebuild_peak_rss_mib']:5.0f}M")
