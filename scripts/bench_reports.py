"""The reports benchmark: a fleet's reports into the fleet database, and one device's day of reports.

- **import**: ``--fleet-devices`` enrolled devices (10,000 by default), each with one signed report
  of ``--fleet-events`` journal events (100) and a sample of one application with two services, on
  a medium; ``sealift fleet import`` of the medium into a new database: time, the database's size
  and the peak RSS. The floor beside it reads every report and parses its envelope and payload
  with the same JSON parser (the least an import does before it verifies and stores anything).
  Target: under 10 s.
- **a device's day**: the reports one device makes in 24 hours at the default settings (a report
  an hour, one after each install or rollback) on a busy day: its registry unreachable for 12
  hours (a failed poll every 8 minutes, the backoff's ceiling at the default interval), two
  installs, one of them rolled back, one refused medium. Target: at most 64 KiB.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402
from securesystemslib.dsse import Envelope  # noqa: E402
from securesystemslib.signer import CryptoSigner  # noqa: E402

from updater.reports import DAILY_BYTES, PAYLOAD_TYPE, REPORTS_FOLDER, report_name  # noqa: E402
from updater.sealed import device_id  # noqa: E402

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def make_fleet(root: Path, *, devices: int, events: int) -> tuple[Path, Path, int]:
    """An inventory of ``devices`` and a medium with one signed report of ``events`` events each;
    returns them and the bytes of reports written."""
    medium = root / "medium"
    entries, written = [], 0
    for n in range(devices):
        kem = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        signing = Ed25519PrivateKey.generate()
        device = device_id("x25519", kem)
        public = base64.b64encode(signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
        site = f"site-{n % 100:03d}"
        entries.append(f"- device: {device}\n  site: {site}\n  profile: x86_64-cpu\n  kem: x25519\n"
                       f"  public_key: {base64.b64encode(kem).decode()}\n  signing_key: {public}\n"
                       "  enrolled: '2026-11-01T00:00:00+00:00'\n")
        body = json.dumps(_report(device, site, n, events), sort_keys=True, separators=(",", ":")).encode()
        envelope = Envelope(body, PAYLOAD_TYPE, {})
        envelope.sign(CryptoSigner(signing))
        folder = medium / REPORTS_FOLDER / device
        folder.mkdir(parents=True)
        data = json.dumps(envelope.to_dict(), sort_keys=True).encode() + b"\n"
        (folder / report_name(1)).write_bytes(data)
        written += len(data)
    inventory = root / "devices.yaml"
    inventory.write_text("devices:\n" + "".join(entries))
    return inventory, medium, written


def _report(device: str, site: str, n: int, events: int) -> dict[str, Any]:
    kinds = []
    for i in range(events):
        time_ = (T0 + dt.timedelta(minutes=10 * i)).isoformat(timespec="seconds")
        if i % 10 == 0:
            kinds.append({"n": i + 1, "time": time_, "kind": "committed", "what": "install", "app": "vision-app",
                          "version": f"1.{i // 10}.0", "reason": "healthy", "seconds": 12.5,
                          "health": [{"check": "healthz", "type": "http", "ok": True, "after": 0.8, "took": 0.004},
                                     {"check": "answer", "type": "inference", "ok": True, "after": 1.2, "took": 0.011 + n % 7 / 1000},
                                     {"check": "stabilisation", "type": "stabilisation", "ok": True, "after": 21.2, "took": 20.0}]})
        elif i % 10 == 5:
            kinds.append({"n": i + 1, "time": time_, "kind": "rolled-back", "what": "install", "app": "vision-app",
                          "version": f"1.{i // 10}.1", "reason": "answer failed: answered in 0.41s, more than the 0.25s allowed",
                          "fault": "unhealthy", "health": [{"check": "answer", "type": "inference", "ok": False, "after": 30.0,
                                                            "took": 0.41}]})
        else:
            kinds.append({"n": i + 1, "time": time_, "kind": "poll-failed", "source": "mirror.site:5000/vision-app",
                          "fault": "delivery", "error": f"cannot reach mirror.site:5000 (timed out); gave up after 4 attempts ({i})"})
    return {"type": "sealift-report", "version": 1, "device": device, "site": site, "profile": "x86_64-cpu", "seq": 1,
            "created": (T0 + dt.timedelta(days=1)).isoformat(timespec="seconds"), "updater": "0.1.0", "events": kinds, "waiting": 0,
            "apps": {"vision-app": {"version": "1.9.0", "slot": "b", "previous": "1.8.0", "phase": "committed", "reason": "healthy",
                                    "fault": "", "services": {"vision": {"status": "running", "restarts": 0, "cpu_seconds": 812.4,
                                                                         "memory_bytes": 48_000_000},
                                                              "mqtt": {"status": "running", "restarts": 1, "cpu_seconds": 12.0,
                                                                       "memory_bytes": 9_000_000}}}},
            "metadata_expires": {"root": "2027-12-01T00:00:00Z", "targets": "2027-03-01T00:00:00Z",
                                 "snapshot": "2026-12-08T00:00:00Z", "timestamp": "2026-12-02T00:00:00Z"},
            "disk": {"free_bytes": 20_000_000_000, "total_bytes": 64_000_000_000}}


def floor(medium: Path) -> float:
    """Read and parse every report with the parser the import uses (orjson where installed)."""
    try:
        from orjson import loads
    except ImportError:
        loads = json.loads  # type: ignore[assignment]
    started = time.perf_counter()
    for path in sorted((medium / REPORTS_FOLDER).glob("*/*.json")):
        envelope = loads(path.read_bytes())
        loads(base64.b64decode(envelope["payload"]))
    return time.perf_counter() - started


def device_day(root: Path) -> dict[str, Any]:
    """One device's busy day at the default settings, with the engine protocol's fake (the report's
    sample has the same shape as on the real engine)."""
    from tests.builders import enrolled_device, quick_releases
    from tests.fakes import FakeEngine
    from updater.reports import EVERY_S, Reports

    releases = quick_releases(root / "releases", versions=("1.0.0", "1.1.0", "1.2.0"))
    installer, _ = enrolled_device(root, releases["root"], FakeEngine(health={"1.2.0": "unhealthy"}))
    clock = [T0]
    reports = Reports(installer, now=lambda: clock[0])
    installer.journal.now = lambda: clock[0]
    minute = 0
    while minute < 24 * 60:
        clock[0] = T0 + dt.timedelta(minutes=minute)
        if minute == 60:
            installer.install(releases["1.0.0"])
        if minute == 600:
            installer.install(releases["1.1.0"])
        if minute == 900:
            installer.install(releases["1.2.0"])  # rolled back
            installer.journal.record("refused", source="/media/usb/old-stick", fault="refused",
                                     error="bundle vision-app 0.9.0 for x86_64-cpu is older than 1.1.0, which this device already accepted")
        if 120 <= minute < 840 and minute % 8 == 0:
            installer.journal.record("poll-failed", source="mirror.site:5000/demo", fault="delivery",
                                     error="mirror.site:5000/demo: cannot reach mirror.site (timed out); gave up after 4 attempts")
        if reports.due():
            reports.make()
        minute += 1
    sizes = [p.stat().st_size for p in reports.kept()]
    return {"reports": len(sizes), "bytes": sum(sizes), "largest": max(sizes), "every_s": EVERY_S, "bound": DAILY_BYTES,
            "events_waiting": len(installer.journal.since(0))}


def measure(*, devices: int, events: int) -> dict[str, Any]:
    from bundler.devices import Inventory
    from bundler.fleet import FleetDatabase

    with tempfile.TemporaryDirectory(prefix="sealift-bench-reports-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        inventory, medium, written = make_fleet(root, devices=devices, events=events)
        made = time.perf_counter() - began
        floor_s = min(floor(medium) for _ in range(2))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        result = FleetDatabase(root / "fleet.db").import_medium(medium, Inventory(inventory))
        import_s = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert result.imported == devices and not result.refused, result.to_json()
        db_bytes = sum(p.stat().st_size for p in root.glob("fleet.db*"))
        started = time.perf_counter()
        again = FleetDatabase(root / "fleet.db").import_medium(medium, Inventory(inventory))
        again_s = time.perf_counter() - started
        assert again.duplicates == devices
        day = device_day(root / "day")
    return {"devices": devices, "events_per_device": events, "reports_bytes": written, "generate_s": round(made, 1),
            "floor_s": round(floor_s, 2), "import_s": round(import_s, 2), "ratio": round(import_s / floor_s, 1),
            "again_s": round(again_s, 2), "db_bytes": db_bytes, "peak_rss_mib": round(max(before, peak) / 1024, 1), "day": day}


def print_report(figures: dict[str, Any]) -> None:
    print(f"import of {figures['devices']} devices x {figures['events_per_device']} events "
          f"({figures['reports_bytes'] / 1e6:.0f} MB of signed reports on a medium):")
    print(f"  floor (read + parse every report)  {figures['floor_s']:8.2f} s")
    print(f"  sealift fleet import               {figures['import_s']:8.2f} s  ({figures['ratio']}x the floor; target < 10 s)")
    print(f"  the same medium again              {figures['again_s']:8.2f} s  (every report a duplicate)")
    print(f"  database                           {figures['db_bytes'] / 1e6:8.1f} MB, peak RSS {figures['peak_rss_mib']} MiB")
    day = figures["day"]
    print(f"one device's busy day: {day['reports']} reports, {day['bytes']} bytes ({day['bytes'] / 1024:.1f} KiB; "
          f"bound {day['bound'] // 1024} KiB), largest {day['largest']} bytes, {day['events_waiting']} events left waiting")
