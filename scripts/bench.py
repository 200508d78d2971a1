#!/usr/bin/env python3
"""Benchmark ``sealift build`` and ``sealift verify`` against the floor measured beside them.

Generates inputs (a 2 GiB incompressible model, a compressible model, configs and an image with a
large layer), then, in one run and on the same warm files:

- the build floor: ``openssl dgst -sha256`` of the inputs plus a ``cp`` of them;
- ``sealift build`` (directory and tar formats): time, peak RSS, bundle size against input size;
- the verify floor: ``openssl dgst -sha256`` of the bundle's bytes;
- ``sealift verify``: time and peak RSS.

With ``--startup``, what the commands cost before they do anything (``sealift-updater status``,
``sealift --help``), beside ``python -c pass``; targets: at most 0.25 s and 32 MiB peak RSS.

Each figure is the median of ``--repeat`` runs; ratios are what to compare across machines.
Targets: build at most 1.3x its floor, verify at most 1.1x its floor, both under 100 MiB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.oci_image import FileEntry, ImageConfig, Platform, PlatformImage, write_image_layout  # noqa: E402

MIB = 1 << 20
SPEC = """\
name: bench
version: 1.0.0
profiles: [x86_64-cpu]
images:
  app: {source: "oci:image:1.0.0"}
models:
  big: {path: models/big.bin}
  packed: {path: models/packed.bin}
configs:
  settings: {path: config/settings.yaml}
app:
  services:
    app:
      image: app
      volumes: ["big:/models/big", "packed:/models/packed", "settings:/etc/settings.yaml"]
"""


def make_inputs(src: Path, *, model_mib: int, packed_mib: int, layer_mib: int) -> list[Path]:
    """Write the inputs; return the files a plain copy of the inputs would read."""
    (src / "models").mkdir(parents=True)
    (src / "config").mkdir()
    _random_file(src / "models/big.bin", model_mib)
    _compressible_file(src / "models/packed.bin", packed_mib)
    (src / "config/settings.yaml").write_text("threshold: 0.5\n" * 64)
    _random_file(src / "layer.bin", layer_mib)
    image = PlatformImage(platform=Platform.parse("linux/amd64"),
                          layers=((FileEntry(path="/data/layer.bin", source=src / "layer.bin"),),),
                          config=ImageConfig(cmd=("/bin/true",)))
    write_image_layout(src / "image", "1.0.0", [image], epoch=0)
    (src / "layer.bin").unlink()
    (src / "sealift.yaml").write_text(SPEC)
    blobs = sorted((src / "image/blobs/sha256").iterdir())
    return [src / "models/big.bin", src / "models/packed.bin", src / "config/settings.yaml", *blobs]


def _random_file(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def _compressible_file(path: Path, mib: int) -> None:
    """Like quantised weights: small values with long runs, about 4:1 under zstd."""
    block = bytes((i * 7 // 64) % 16 for i in range(MIB // 2)) + os.urandom(MIB // 8) * 4
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block[:MIB])


def timed(cmd: list[str], *, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip()}")
    return elapsed, int(usage.ru_maxrss)


def sealift(*args: str) -> list[str]:
    return [sys.executable, "-m", "bundler", *args]


def bundle_files(bundle: Path) -> list[Path]:
    return [bundle] if bundle.is_file() else sorted(p for p in bundle.rglob("*") if p.is_file())


def warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 * MIB):
                pass


def one_round(work: Path, spec: Path, inputs: list[Path], fmt: str) -> dict[str, float]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0"}
    out, copy = work / "out", work / "copy"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    warm(inputs)
    hash_s, _ = timed(["openssl", "dgst", "-sha256", *map(str, inputs)])
    cp_s, _ = timed(["cp", *map(str, inputs), str(copy)])
    shutil.rmtree(copy)
    subprocess.run(["sync"], check=True)
    build_s, build_rss = timed(sealift("build", str(spec), "--out", str(out), "--format", fmt), env=env)
    subprocess.run(["sync"], check=True)
    bundle = next(out.iterdir())
    files = bundle_files(bundle)
    warm(files)
    verify_floor_s, _ = timed(["openssl", "dgst", "-sha256", *map(str, files)])
    verify_s, verify_rss = timed(sealift("verify", str(bundle)))
    return {
        "floor_hash_s": hash_s, "floor_cp_s": cp_s, "build_s": build_s, "build_rss_kib": build_rss,
        "verify_floor_s": verify_floor_s, "verify_s": verify_s, "verify_rss_kib": verify_rss,
        "bundle_bytes": sum(p.stat().st_size for p in files),
    }


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory_gib": f"{mem_kib / MIB:.0f}", "kernel": platform.release(),
            "python": platform.python_version(), "openssl": openssl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-mib", type=int, default=2048, help="size of the incompressible model (default 2048)")
    parser.add_argument("--packed-mib", type=int, default=256, help="size of the compressible model (default 256)")
    parser.add_argument("--layer-mib", type=int, default=256, help="size of the image layer (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--workdir", type=Path, help="where to write inputs and bundles (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--update", action="store_true",
                        help="measure the updater instead: service gap during an update, time to roll back, and "
                             "failed requests and latency through the ingress during switches (starts its own Docker "
                             "engine and HAProxy; see scripts/bench_update.py)")
    parser.add_argument("--delivery", action="store_true",
                        help="measure delivery instead: bytes per hop through two mirrors, delta media, and many "
                             "devices on one site mirror (starts its own registries; see scripts/bench_delivery.py)")
    parser.add_argument("--devices", type=int, default=50, help="devices pulling at once with --delivery (default 50)")
    parser.add_argument("--reports", action="store_true",
                        help="measure reports instead: a fleet's reports into the fleet database, and one device's day of "
                             "reports against its daily bound (see scripts/bench_reports.py)")
    parser.add_argument("--rollout", action="store_true",
                        help="measure staged rollouts instead: simulated devices through two three-wave rollouts, one halted "
                             "by its canary (see scripts/bench_rollout.py)")
    parser.add_argument("--rollout-devices", type=int, default=1000, help="simulated devices with --rollout (default 1000)")
    parser.add_argument("--fleet-devices", type=int, default=10_000, help="devices with --reports (default 10000)")
    parser.add_argument("--fleet-events", type=int, default=100, help="events per device with --reports (default 100)")
    parser.add_argument("--delta", action="store_true",
                        help="measure chunk deltas inside large blobs instead: bytes moved against the changed bytes, "
                             "zstd --patch-from and casync, and the rebuild against cp (see scripts/bench_delta.py)")
    parser.add_argument("--delta-mib", type=int, default=1024, help="size of the blobs with --delta (default 1024)")
    parser.add_argument("--startup", action="store_true",
                        help="measure start-up instead: what a command costs before it does anything, beside `python -c pass`")
    args = parser.parse_args()
    if args.startup:
        figures = {"machine": machine(), "commands": measure_startup(max(args.repeat, 21))}
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print_startup(figures)
        return
    if args.delta:
        from scripts.bench_delta import measure as measure_delta
        from scripts.bench_delta import print_report as print_delta

        figures = {"machine": machine(), **measure_delta(args.delta_mib, args.workdir)}
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print_delta(figures)
        return
    if args.rollout:
        from scripts.bench_rollout import measure as measure_rollout
        from scripts.bench_rollout import print_report as print_rollout

        figures = {"machine": machine(), **measure_rollout(devices=args.rollout_devices)}
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print_rollout(figures)
        return
    if args.reports:
        from scripts.bench_reports import measure as measure_reports
        from scripts.bench_reports import print_report as print_reports

        figures = {"machine": machine(), **measure_reports(devices=args.fleet_devices, events=args.fleet_events)}
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print_reports(figures)
        return
    if args.delivery:
        from scripts.bench_delivery import measure as measure_delivery
        from scripts.bench_delivery import print_report as print_delivery

        figures = measure_delivery(args.repeat, devices=args.devices)
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print_delivery(figures)
        return
    if args.update:
        from scripts.bench_update import measure
        from scripts.bench_update import print_report as print_update

        figures = measure(args.repeat)
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print_update(figures)
        return

    work = Path(tempfile.mkdtemp(prefix="sealift-bench-", dir=args.workdir))
    try:
        print(f"generating inputs in {work} ...", file=sys.stderr)
        inputs = make_inputs(work / "src", model_mib=args.model_mib, packed_mib=args.packed_mib, layer_mib=args.layer_mib)
        input_bytes = sum(p.stat().st_size for p in inputs)
        results: dict[str, dict[str, float]] = {}
        for fmt in ("dir", "tar"):
            rounds = [one_round(work, work / "src/sealift.yaml", inputs, fmt) for _ in range(args.repeat)]
            results[fmt] = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        report = {"machine": machine(), "input_bytes": input_bytes, "results": results}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_report(report)


STARTUP = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "sealift-updater status": ["sealift-updater", "--state-dir", "{state}", "status"],
    "sealift-updater --help": ["sealift-updater", "--help"],
    "sealift --help": ["sealift", "--help"],
    "sealift --version": ["sealift", "--version"],
}


# A forked child's peak RSS starts at its parent's high-water mark, so each command is started by
# a small launcher (no site imports: smaller than any command measured) that reports its child's.
_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def launched(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and the command's own peak RSS (KiB)."""
    done = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *argv], capture_output=True, text=True, check=True)
    seconds, rss, code = done.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(argv)} failed")
    return float(seconds), int(rss)


def measure_startup(repeat: int) -> dict[str, dict[str, float]]:
    """Median wall seconds and peak RSS of each command in STARTUP, run ``repeat`` times in turn."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="sealift-bench-") as state:
        commands = {name: [str(bin_dir / argv[0]) if (bin_dir / argv[0]).exists() else argv[0],
                           *(a.replace("{state}", state) for a in argv[1:])] for name, argv in STARTUP.items()}
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        for _ in range(repeat):
            for name, argv in commands.items():
                runs[name].append(launched(argv))
    return {name: {"seconds": statistics.median(t for t, _ in found), "rss_kib": statistics.median(r for _, r in found)}
            for name, found in runs.items()}


def print_startup(figures: dict) -> None:  # type: ignore[type-arg]
    m = figures["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}")
    floor = figures["commands"]["python -c pass (floor)"]
    print("| command | s | - floor | peak RSS MiB | - floor |")
    print("|---|---|---|---|---|")
    for name, r in figures["commands"].items():
        print(f"| `{name}` | {r['seconds']:.3f} | {r['seconds'] - floor['seconds']:+.3f} | {r['rss_kib'] / 1024:.1f} "
              f"| {(r['rss_kib'] - floor['rss_kib']) / 1024:+.1f} |")


def print_report(report: dict) -> None:  # type: ignore[type-arg]
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
          f"Python {m['python']}, {m['openssl']}")
    print(f"inputs: {report['input_bytes'] / MIB:.0f} MiB")
    print("| format | build s | floor s (sha256 + cp) | build/floor | build RSS MiB | verify s | floor s (sha256) "
          "| verify/floor | verify RSS MiB | bundle/input |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fmt, r in report["results"].items():
        floor = r["floor_hash_s"] + r["floor_cp_s"]
        print(f"| {fmt} | {r['build_s']:.2f} | {floor:.2f} ({r['floor_hash_s']:.2f} + {r['floor_cp_s']:.2f}) "
              f"| {r['build_s'] / floor:.2f}x | {r['build_rss_kib'] / 1024:.0f} | {r['verify_s']:.2f} "
              f"| {r['verify_floor_s']:.2f} | {r['verify_s'] / r['verify_floor_s']:.2f}x | {r['verify_rss_kib'] / 1024:.0f} "
              f"| {r['bundle_bytes'] / report['input_bytes']:.3f} |")


if __name__ == "__main__":
    main()
