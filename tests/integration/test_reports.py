"""Reports up the registry path on real registries: a device pushes to its site's reports registry
(which asks for credentials), `sealift reports sync` carries them two hops to the office, and
`sealift fleet import` takes them in, verified, once each. The device's engine is the fake of the
engine protocol (the real engine's side of a report is in test_daemon)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import bcrypt
import pytest
from click.testing import CliRunner

from bundler.cli import cli as sealift
from tests.builders import enrolled_device, quick_releases
from tests.envelope import error_of, result_of
from tests.fakes import FakeEngine
from tests.realparts import RegistryFactory
from updater.daemon import Daemon
from updater.errors import Conflict, InputError
from updater.registry import connect
from updater.reports import Reports
from updater.reportstore import push_report

pytestmark = pytest.mark.registry


def sealift_json(*args: str, code: int = 0) -> dict:  # type: ignore[type-arg]
    """The result of a sealift command with --json; with ``code``, of one that failed (and still says what it did)."""
    result = CliRunner().invoke(sealift, [*args, "--json"])
    assert result.exit_code == code, result.output
    if code:
        error, done = error_of(result.stdout)
        assert error["exit_code"] == code
        return done  # type: ignore[no-any-return]
    return result_of(result.stdout)  # type: ignore[no-any-return]


def test_reports_travel_from_a_device_through_two_mirrors_to_the_fleet_database(
        registry_factory: RegistryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    releases = quick_releases(tmp_path / "releases")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"".join(name + b":" + bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)) + b"\n"
                                  for name, password in ((b"device", b"reports only"), (b"sync", b"carry on"))))
    auth = {"auth": {"htpasswd": {"realm": "sealift-reports", "path": str(htpasswd)}}}
    site, dmz, office = registry_factory(config=auth), registry_factory(), registry_factory()
    updates = registry_factory(config={"auth": {"htpasswd": {"realm": "sealift-updates", "path": str(tmp_path / "nobody")}}})
    (tmp_path / "nobody").write_bytes(b"operator:" + bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)) + b"\n")
    config = tmp_path / "docker"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))

    def login(user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        (config / "config.json").write_text(json.dumps({"auths": {site.address: {"auth": token}, updates.address: {"auth": token}}}))

    installer, inventory = enrolled_device(tmp_path, releases["root"], FakeEngine())
    device = installer.identity.record()["device"]
    assert installer.install(releases["1.0.0"]).committed
    reports = Reports(installer)
    lines: list[str] = []
    daemon = Daemon(installer, None, reports=reports, report_to=f"{site.address}/reports", plain_http=True, log=lines.append)
    # without credentials the reports wait, said once
    (config / "config.json").write_text("{}")
    daemon.run(once=True)
    assert sum('event="reports-not-pushed"' in line for line in lines) == 1 and "user name and password" in lines[-1]
    daemon.report()
    assert sum('event="reports-not-pushed"' in line for line in lines) == 1
    # the device's credentials write reports, and nothing else: not to the update registry
    login("device", "reports only")
    daemon.report()
    assert 'event="reports-pushed"' in lines[-1] and 'count="1"' in lines[-1]
    with pytest.raises(InputError, match="not authorised"):
        client = connect(f"{updates.address}/vision-app", plain_http=True, what="registry")
        push_report(client, 1, b"{}")
    assert reports.push(f"{site.address}/reports", plain_http=True) == 0  # nothing new: nothing sent
    installer.journal.record("poll-failed", source="mirror", fault="delivery", error="connection refused")
    reports.make()
    assert reports.push(f"{site.address}/reports", plain_http=True) == 1
    # two hops, each resumable and idempotent
    login("sync", "carry on")
    first = sealift_json("reports", "sync", "--from", f"{site.address}/reports", "--to", f"{dmz.address}/reports", "--plain-http")
    assert first == {"copied": 2, "present": 0, "devices": [device], "conflicts": []}
    again = sealift_json("reports", "sync", "--from", f"{site.address}/reports", "--to", f"{dmz.address}/reports", "--plain-http")
    assert again == {"copied": 0, "present": 2, "devices": [device], "conflicts": []}
    # a report forged on the way (in the DMZ) travels on, and is refused at the office
    forged = json.loads(reports.kept()[-1].read_bytes())
    body = json.loads(base64.b64decode(forged["payload"])) | {"seq": 3}
    forged["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    push_report(connect(f"{dmz.address}/reports/{device}", plain_http=True, what="dmz"), 3, json.dumps(forged).encode())
    hop = sealift_json("reports", "sync", "--from", f"{dmz.address}/reports", "--to", f"{office.address}/reports", "--plain-http")
    assert hop["copied"] == 3 and hop["conflicts"] == []
    with pytest.raises(Conflict, match="report 0000000001 is there already with other content"):  # a tag is never overwritten
        push_report(connect(f"{office.address}/reports/{device}", plain_http=True, what="office"), 1, json.dumps(forged).encode())
    db = str(tmp_path / "fleet.db")
    imported = sealift_json("fleet", "import", f"{office.address}/reports", "--plain-http", "--inventory", str(inventory),
                            "--db", db, code=3)
    assert imported["imported"] == 2 and len(imported["refused"]) == 1
    assert "forged or altered" in imported["refused"][0]["reason"] and imported["refused"][0]["file"].endswith(":0000000003")
    twice = sealift_json("fleet", "import", f"{office.address}/reports", "--plain-http", "--inventory", str(inventory),
                         "--db", db, code=3)
    assert twice["imported"] == 0 and twice["duplicates"] == 2  # the forged one is refused again, and counted again
    status = sealift_json("fleet", "status", "--inventory", str(inventory), "--db", db)
    assert status["running"] == {"plant-7 x86_64-cpu demo": {"1.0.0": 1}}
    assert status["devices"][device]["seq"] == 2 and status["refused_reports"] == 2
    assert dt.datetime.fromisoformat(status["devices"][device]["created"]) <= dt.datetime.now(dt.UTC)
