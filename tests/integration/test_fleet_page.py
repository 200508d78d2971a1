"""The fleet page in a real browser (Debian's Chromium, headless): signed reports of several devices
at two sites, imported from a medium, rendered by `sealift fleet report --html`; the page renders
with no console message, every figure on it is the database's, and its screenshot is kept
(``test-artifacts/fleet-report.png``, or under ``SEALIFT_TEST_ARTIFACTS``)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner

from bundler.cli import cli as sealift
from bundler.devices import Inventory
from bundler.fleet import FleetDatabase
from bundler.fleet_page import adoption, inference_latency, rollback_reasons
from tests.builders import enrolled_device, quick_releases
from tests.fakes import FakeEngine
from tests.realparts import unavailable
from updater.reports import Reports

ARTIFACTS = Path(os.environ.get("SEALIFT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
DAY0 = (dt.datetime.now(dt.UTC) - dt.timedelta(days=4)).replace(minute=0, second=0, microsecond=0)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class Values(HTMLParser):
    """Every ``data-value`` on the page, by the id of the table (or element) it belongs to."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.found: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "table":
            self.table = named.get("id") or named.get("data-app") or "?"
        if "data-value" in named:
            self.found.setdefault(named.get("id") or self.table or "?", []).append(str(named["data-value"]))


def test_the_fleet_page_renders_in_a_browser_with_the_databases_numbers(tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    releases = quick_releases(tmp_path / "releases")
    medium = tmp_path / "usb"
    devices = []
    for n, site in enumerate(("plant-7", "plant-7", "plant-7", "harbour-2")):
        clock = Clock(DAY0 + dt.timedelta(hours=n))
        installer, inventory = enrolled_device(tmp_path, releases["root"], FakeEngine(health={"1.1.0": "unhealthy"} if n == 2 else {}),
                                               name=f"device-{n}", site=site)
        reports = Reports(installer, now=clock)
        assert installer.install(releases["1.0.0"]).committed
        reports.make()
        for day in range(1, 4):  # the update reaches a device a day; device 2's rolls back; the harbour's goes quiet
            clock.now = DAY0 + dt.timedelta(days=day, hours=n)
            if day == min(n + 1, 3) and installer.install(releases["1.1.0"]).committed:
                installer.journal.record("committed", what="install", app="demo", version="1.1.0", reason="healthy",
                                         health=[{"check": "answer", "type": "inference", "ok": True, "after": 1.5,
                                                  "took": 0.040 + n * 0.01}])
            if n != 3 or day < 2:
                reports.make()
                reports.to_medium(medium)
        devices.append(installer.identity.record()["device"])
    db = tmp_path / "fleet.db"
    runner = CliRunner()
    imported = runner.invoke(sealift, ["fleet", "import", str(medium), "--db", str(db), "--inventory", str(inventory)])
    assert imported.exit_code == 0, imported.output
    page = tmp_path / "fleet.html"
    written = runner.invoke(sealift, ["fleet", "report", "--html", str(page), "--db", str(db), "--inventory", str(inventory)])
    assert written.exit_code == 0, written.output
    assert not re.search(r"(src|href)=\"(https?:)?//", page.read_text())  # nothing fetched: it opens from a stick
    # the browser: the DOM it rendered, anything the page said on the console, and a screenshot
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    rendered = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=120, check=True)
    assert "CONSOLE" not in rendered.stderr, [line for line in rendered.stderr.splitlines() if "CONSOLE" in line]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "fleet-report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    values = Values()
    values.feed(rendered.stdout)
    shown = values.found
    assert rendered.stdout.count("<svg") >= 4  # adoption, rollbacks, latency, sites
    # every number on the page is the database's
    with FleetDatabase(db).connect() as connection:
        assert shown["reports"] == [str(connection.execute("SELECT COUNT(*) FROM reports").fetchone()[0])]
        assert shown["devices"] == [str(len(devices))]
        days = adoption(connection)["demo"]
        assert shown["demo"] == [str(n) for day in sorted(days) for _, n in sorted(days[day].items())]
        assert days[(DAY0 + dt.timedelta(days=3)).date().isoformat()] == {"1.0.0": 1, "1.1.0": 2}  # the harbour: silent
        reasons = rollback_reasons(connection)
        assert reasons == [("unhealthy: own", 1)] and shown["rollbacks"] == ["1"]
        latency = inference_latency(connection)
        assert [(r["version"], r["count"], r["median_ms"], r["p95_ms"]) for r in latency] == [("1.1.0", 2, 45.0, 50.0)]
        assert shown["latency"] == [str(v) for r in latency for v in (r["count"], r["median_ms"], r["p95_ms"])]
        running = dict(connection.execute("SELECT device, version FROM samples s WHERE seq = "
                                          "(SELECT MAX(seq) FROM samples t WHERE t.device = s.device)").fetchall())
    assert sorted(running.values()) == ["1.0.0", "1.0.0", "1.1.0", "1.1.0"]  # device 2 rolled back; the harbour went quiet
    assert shown["running"] == ["1", "1", "2"]  # harbour-2: 1.0.0; plant-7: 1.0.0 (rolled back) and 1.1.0 twice
    assert shown["silent"] == ["1"] and "harbour-2" in rendered.stdout
    assert Inventory(inventory).devices()[0].device in devices
