"""What a device shows of itself locally: Prometheus metrics read from the state directory, `status
--json`'s last poll, expiry, profile and version, and the priority each service log line carries
to journald."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.builders import enrolled_device, quick_releases
from tests.envelope import result_of
from tests.fakes import FakeEngine
from updater.cli import cli as updater_cli
from updater.daemon import priority
from updater.errors import DeliveryError
from updater.lastseen import last_polls, record_poll
from updater.metrics import StateCollector, write_textfile


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return quick_releases(tmp_path_factory.mktemp("metrics"))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_metrics_say_what_the_state_says(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer, _ = enrolled_device(tmp_path, bundles["root"], FakeEngine(health={"1.1.0": "unhealthy"}))
    assert installer.install(bundles["1.0.0"]).committed
    assert not installer.install(bundles["1.1.0"]).committed
    now = dt.datetime.now(dt.UTC)
    record_poll(installer.state_dir, "mirror:5000/demo", when=now, error=DeliveryError("cannot reach mirror:5000"))
    registry = CollectorRegistry()
    registry.register(StateCollector(installer.state_dir, now=lambda: now))
    found = samples(generate_latest(registry).decode())
    assert found[("sealift_release_info", (("app", "demo"), ("overlay", ""), ("slot", "a"), ("version", "1.0.0")))] == 1
    assert found[("sealift_phase", (("app", "demo"), ("phase", "rolled-back")))] == 1
    assert found[("sealift_phase", (("app", "demo"), ("phase", "committed")))] == 0
    assert found[("sealift_rollbacks", (("app", "demo"),))] == 1
    own = (("app", "demo"), ("check", "own"), ("type", "container"), ("version", "1.1.0"))
    assert found[("sealift_health_check_ok", own)] == 0 and found[("sealift_health_check_seconds", own)] >= 0
    assert found[("sealift_last_poll_ok", (("source", "mirror:5000/demo"),))] == 0
    assert found[("sealift_last_poll_timestamp_seconds", (("source", "mirror:5000/demo"),))] == pytest.approx(now.timestamp(), abs=1)
    expiry = {labels[0][1]: value for (name, labels), value in found.items() if name == "sealift_metadata_expiry_seconds"}
    assert set(expiry) == {"root", "targets", "snapshot", "timestamp"} and all(v > 0 for v in expiry.values())
    # the textfile node-exporter reads: the same, written whole
    path = tmp_path / "sealift.prom"
    write_textfile(installer.state_dir, path)
    assert samples(path.read_text())[("sealift_rollbacks", (("app", "demo"),))] == 1
    assert not list(tmp_path.glob("sealift.prom.*"))


def test_status_json_shows_the_last_poll_expiry_profile_and_version(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer, _ = enrolled_device(tmp_path, bundles["root"], FakeEngine())
    record_poll(installer.state_dir, "mirror:5000/demo", when=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    record_poll(installer.state_dir, "mirror:5000/other", when=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
                error=DeliveryError("cannot reach mirror:5000 (timed out)"))
    assert set(last_polls(installer.state_dir)) == {"mirror:5000/demo", "mirror:5000/other"}
    result = CliRunner().invoke(updater_cli, ["--state-dir", str(installer.state_dir), "status", "--json"])
    assert result.exit_code == 0, result.output
    shown = result_of(result.stdout)
    assert shown["profile"] == "x86_64-cpu" and shown["updater"] and shown["apps"] == {}
    assert set(shown["metadata_expires"]) == {"root"}  # nothing verified yet: the provisioned root alone
    assert shown["last_poll"]["mirror:5000/other"] == {"time": "2026-12-01T00:00:00+00:00", "ok": False, "fault": "delivery",
                                                       "error": "cannot reach mirror:5000 (timed out)"}
    text = CliRunner().invoke(updater_cli, ["--state-dir", str(installer.state_dir), "status"])
    assert "last poll of mirror:5000/other: 2026-12-01T00:00:00+00:00 failed (delivery: cannot reach" in text.output
    assert "signed metadata: " in text.output and " expires first, at " in text.output


@pytest.mark.parametrize(("line", "level"), [
    ('event="refused" bundle="/media/usb/x" fault="refused" error="signature"', 3),
    ('event="recover-failed" app="demo" fault="engine"', 3),
    ('event="poll-failed" source="m" fault="delivery"', 4),
    ('event="rolled-back" release="demo 1.1.0"', 4),
    ('event="reports-not-written" medium="/media/usb"', 4),
    ("warning: could not converge first", 4),
    ('event="committed" release="demo 1.1.0"', 6),
    ("[6/7] health checks", 6),
])
def test_each_log_line_carries_its_priority_to_journald(line: str, level: int) -> None:
    assert priority(line) == level
