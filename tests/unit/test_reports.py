"""Device reports, end to end on one machine: the journal an install writes, the signed and numbered
report made from it, the medium it leaves on, and the fleet database that takes it in (or refuses
it) at the office. The engine is the fake of the engine protocol; the Docker engine's side of a
report (what a container uses) is covered by the integration tests."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from securesystemslib.dsse import Envelope

from bundler.devices import Inventory
from bundler.fleet import FleetDatabase, fleet_status
from tests.builders import enrolled_device, quick_releases
from tests.envelope import result_of
from tests.fakes import FakeEngine
from updater.errors import Conflict, DeliveryError, InputError
from updater.install import Installer
from updater.journal import Journal
from updater.profiles import builtin_profile_dir, load_profiles
from updater.reports import REPORTS_FOLDER, Reports

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]
T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return quick_releases(tmp_path_factory.mktemp("reports"))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def enrolled(tmp_path: Path, bundles: dict[str, Path], engine: FakeEngine, *, name: str = "device") -> tuple[Installer, Path]:
    return enrolled_device(tmp_path, bundles["root"], engine, name=name)


def payload(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(Envelope.from_dict(json.loads(path.read_bytes())).payload)  # type: ignore[no-any-return]


def test_the_journal_numbers_events_keeps_them_until_reported_and_survives_a_torn_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert [journal.record("poll-failed", source="m:5000/app", fault="delivery", error=f"down {i}") for i in range(3)] == [1, 2, 3]
    with open(journal.path, "ab") as f:
        f.write(b'{"n": 4, "kind": "cut sh')  # a crash in the middle of a write
    assert [e["n"] for e in journal.since(0)] == [1, 2, 3]
    assert journal.record("committed", app="demo", version="1.0.0", overlay=None, reason="healthy") == 4
    journal.forget(3)
    assert [(e["n"], e["kind"]) for e in journal.since(0)] == [(4, "committed")]
    assert "overlay" not in journal.since(0)[0]  # empty fields are not kept
    journal.forget(4)
    assert journal.since(0) == [] and journal.record("refused", error="x" * 5000) == 5  # numbering goes on
    assert len(journal.since(0)[0]["error"]) == 400
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "journal").write_text("a file where the journal's folder goes")  # a disk that says no, even to root
    assert Journal(blocked).record("refused", error="cannot be kept") is None


def test_a_journal_past_its_bound_drops_its_oldest_half_and_the_numbers_show_it(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import updater.journal

    monkeypatch.setattr(updater.journal, "MAX_BYTES", 4000)
    journal = Journal(tmp_path)
    numbers = [journal.record("poll-failed", error=f"registry down, try {i}") for i in range(100)]
    assert numbers == list(range(1, 101))
    kept = [e["n"] for e in journal.since(0)]
    assert journal.path.stat().st_size <= 4000 and kept[-1] == 100 and kept[0] > 1
    assert kept == list(range(kept[0], 101))  # the gap is at the start, where the fleet sees it
    journal.path.write_bytes(b"x" * 5000)  # nothing readable left in it, and past the bound: it starts again
    n = journal.record("refused", error="after a damaged journal")
    assert n is not None and [e["n"] for e in journal.since(0)] == [n] and journal.path.stat().st_size < 4000


def test_an_install_is_journaled_and_reported_signed_numbered_and_with_what_runs(tmp_path: Path, bundles: dict[str, Path]) -> None:
    clock = Clock()
    installer, _ = enrolled(tmp_path, bundles, FakeEngine(health={"1.1.0": "unhealthy"}))
    reports = Reports(installer, now=clock)
    assert installer.install(bundles["1.0.0"]).committed
    assert not installer.install(bundles["1.1.0"]).committed
    assert reports.due()  # an install ended: a report is due at once
    first = reports.make()
    assert first is not None and first.name == "0000000001.json"
    report = payload(first)
    record = installer.identity.record()
    assert (report["device"], report["site"], report["profile"], report["seq"]) == (record["device"], "plant-7", CPU.name, 1)
    kinds = [(e["kind"], e.get("version")) for e in report["events"]]
    assert kinds == [("committed", "1.0.0"), ("rolled-back", "1.1.0")]
    rolled = report["events"][1]
    assert rolled["fault"] == "unhealthy" and rolled["reason"].startswith("own failed")
    assert [c["check"] for c in report["events"][0]["health"]] == ["own", "stabilisation"]
    assert all(c["took"] >= 0 and c["after"] >= 0 for c in report["events"][0]["health"])
    app = report["apps"]["demo"]
    assert app["version"] == "1.0.0" and app["phase"] == "rolled-back" and app["fault"] == "unhealthy"
    assert app["services"] and all(s["status"] == "running" and s["memory_bytes"] > 0 for s in app["services"].values())
    assert set(report["metadata_expires"]) == {"root", "targets", "snapshot", "timestamp"}
    assert report["disk"]["free_bytes"] > 0
    # the envelope is signed by the key the enrollment record names, and by nothing else
    key = Inventory(tmp_path / "devices.yaml").devices()[0].report_key()
    assert key is not None and len(Envelope.from_dict(json.loads(first.read_bytes())).verify([key], 1)) == 1
    # the events a report carried are gone from the journal; the next report numbers on
    assert installer.journal.since(0) == [] and not reports.due()
    clock.now += dt.timedelta(hours=1)
    assert reports.due()
    second = reports.make()
    assert second is not None and payload(second)["seq"] == 2 and payload(second)["events"] == []
    assert b"PRIVATE" not in first.read_bytes() and (installer.state_dir / "identity/signing.key").read_bytes() not in first.read_bytes()


def test_reports_keep_to_their_daily_bound_and_lose_no_event(tmp_path: Path, bundles: dict[str, Path]) -> None:
    clock = Clock()
    installer, _ = enrolled(tmp_path, bundles, FakeEngine())
    reports = Reports(installer, daily=6000, now=clock)
    for i in range(60):
        installer.journal.record("refused", source=f"/media/usb/{i}", fault="refused", error=f"signature {i} does not verify")
    made = [reports.make() for _ in range(5)]
    assert made[0] is not None and 0 < len(payload(made[0])["events"]) < 60
    assert sum(p.stat().st_size for p in made if p) <= 6000
    assert made[-1] is None  # the day's allowance is spent: the rest wait
    clock.now += dt.timedelta(days=1)
    while installer.journal.since(0):
        assert reports.make() is not None
        clock.now += dt.timedelta(days=1)
    carried = [e["n"] for p in reports.kept() for e in payload(p)["events"]]
    assert carried == list(range(1, 61))  # every event, once, in order
    assert [payload(p)["seq"] for p in reports.kept()] == list(range(1, len(reports.kept()) + 1))


def test_repeats_are_folded_into_one_event_with_a_count(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer, _ = enrolled(tmp_path, bundles, FakeEngine())
    for _ in range(40):
        installer.journal.record("poll-failed", source="mirror:5000/demo", fault="delivery", error="connection refused")
    installer.journal.record("poll-failed", source="mirror:5000/demo", fault="delivery", error="timed out")
    made = Reports(installer, now=Clock()).make()
    assert made is not None
    events = payload(made)["events"]
    assert [(e["error"], e.get("count", 1)) for e in events] == [("connection refused", 40), ("timed out", 1)]
    assert events[0]["first"] <= events[0]["time"] and events[0]["n"] == 40


def test_a_medium_takes_the_reports_it_lacks_and_the_office_imports_each_once(tmp_path: Path, bundles: dict[str, Path]) -> None:
    clock = Clock()
    installer, inventory = enrolled(tmp_path, bundles, FakeEngine())
    reports = Reports(installer, now=clock)
    assert installer.install(bundles["1.0.0"]).committed
    reports.make()
    medium = tmp_path / "usb"
    medium.mkdir()
    assert reports.to_medium(medium) == 1 and reports.to_medium(medium) == 0
    clock.now += dt.timedelta(hours=2)
    reports.make()
    assert reports.to_medium(medium) == 1
    device = installer.identity.record()["device"]
    assert sorted(p.name for p in (medium / REPORTS_FOLDER / device).iterdir()) == ["0000000001.json", "0000000002.json"]
    database = FleetDatabase(tmp_path / "fleet.db")
    first = database.import_medium(medium, Inventory(inventory))
    assert (first.imported, first.duplicates, first.refused) == (2, 0, [])
    again = database.import_medium(medium, Inventory(inventory))
    assert (again.imported, again.duplicates, again.refused) == (0, 2, [])
    with database.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 2
        assert db.execute("SELECT kind, app, version FROM events").fetchall() == [("committed", "demo", "1.0.0")]
        status = fleet_status(db, Inventory(inventory), now=T0)
    assert status["running"] == {f"plant-7 {CPU.name} demo": {"1.0.0": 1}}
    assert status["devices"][device]["seq"] == 2 and status["failing"] == [] and status["never_heard"] == []


def test_forged_replayed_unknown_revoked_and_damaged_reports_are_refused_and_counted(tmp_path: Path,
                                                                                   bundles: dict[str, Path]) -> None:
    clock = Clock()
    installer, inventory = enrolled(tmp_path, bundles, FakeEngine())
    stranger, _ = enrolled(tmp_path / "elsewhere", bundles, FakeEngine(), name="stranger")
    reports = Reports(installer, now=clock)
    medium = tmp_path / "usb"
    reports.make()
    reports.to_medium(medium)
    device = installer.identity.record()["device"]
    folder = medium / REPORTS_FOLDER / device
    genuine = folder / "0000000001.json"
    # a forgery: the payload altered after signing
    envelope = json.loads(genuine.read_bytes())
    altered = payload(genuine) | {"site": "plant-9"}
    import base64
    envelope["payload"] = base64.b64encode(json.dumps(altered).encode()).decode()
    (folder / "0000000009.json").write_text(json.dumps(envelope))
    # a replay: report 1 again, made anew with other content (a device restored from a copy taken before it)
    installer.journal.record("refused", error="another event")
    (installer.state_dir / "reports/state.json").unlink()
    clock.now += dt.timedelta(hours=1)
    second = reports.make()
    assert second is not None and payload(second)["seq"] == 2  # a lost state numbers on from the kept reports
    shutil.rmtree(installer.state_dir / "reports")  # the copy held none
    again = reports.make()
    assert again is not None and payload(again)["seq"] == 1
    (folder / "0000000010.json").write_bytes(again.read_bytes())
    # cut short, and a stranger's report
    (folder / "0000000011.json").write_bytes(genuine.read_bytes()[:100])
    Reports(stranger, now=clock).make()
    Reports(stranger, now=clock).to_medium(medium)
    database = FleetDatabase(tmp_path / "fleet.db")
    result = database.import_medium(medium, Inventory(inventory))
    why = {Path(f).name: reason for f, reason in result.refused}
    assert result.imported == 1
    assert "forged or altered" in why["0000000009.json"]
    assert "imported before with other content" in why["0000000010.json"]
    assert "malformed or cut short" in why["0000000011.json"]
    assert "does not know" in why["0000000001.json"] and len(why) == 4  # the stranger's, filed under its own name
    Inventory(inventory).revoke(device)
    (folder / "0000000010.json").unlink()
    reports.make()
    reports.to_medium(medium)
    revoked = database.import_medium(medium, Inventory(inventory))
    assert revoked.imported == 0 and any("revoked" in r for _, r in revoked.refused)
    with database.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM refusals").fetchone()[0] == len(result.refused) + len(revoked.refused)


def test_a_full_or_read_only_medium_is_a_delivery_fault_and_the_reports_wait(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer, _ = enrolled(tmp_path, bundles, FakeEngine())
    reports = Reports(installer, now=Clock())
    reports.make()
    with pytest.raises(DeliveryError, match="holds 10 bytes of this device's reports, its bound"):
        reports.to_medium(tmp_path / "small", bound=10)
    assert not any((tmp_path / "small" / REPORTS_FOLDER).glob("*/*.json"))
    assert len(reports.kept()) == 1


def test_a_damaged_or_locked_fleet_database_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "fleet.db"
    broken.write_bytes(b"this is not SQLite" * 100)
    (tmp_path / "usb" / REPORTS_FOLDER).mkdir(parents=True)
    with pytest.raises(InputError, match="not a fleet database, or a damaged one"):
        FleetDatabase(broken).import_medium(tmp_path / "usb", Inventory(tmp_path / "devices.yaml"))
    locked = tmp_path / "locked.db"
    with FleetDatabase(locked).connect():
        pass
    holder = sqlite3.connect(locked)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Conflict, match="locked by another sealift"):
            FleetDatabase(locked, wait=0.2).import_medium(tmp_path / "usb", Inventory(tmp_path / "devices.yaml"))
    finally:
        holder.close()


@pytest.mark.parametrize("parallel", [False, True], ids=["inline", "second-process"])
def test_a_signed_report_with_fields_of_the_wrong_type_is_refused_and_the_rest_imported(
        tmp_path: Path, bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch, parallel: bool) -> None:
    from bundler import fleet_intake

    if parallel:
        monkeypatch.setattr(fleet_intake, "PARALLEL_FROM", 1)  # the path a large import takes: parsed in a spawned process
    installer, inventory = enrolled(tmp_path, bundles, FakeEngine())
    reports = Reports(installer, now=Clock())
    installer.journal.record("refused", app=["a", "list"], error="a field no updater writes")  # signed all the same
    reports.make()
    installer.journal.record("poll-failed", source="mirror", fault="delivery", error="timed out")
    reports.make()
    medium = tmp_path / "usb"
    reports.to_medium(medium)
    result = FleetDatabase(tmp_path / "fleet.db").import_medium(medium, Inventory(inventory))
    assert result.imported == 1 and [Path(f).name for f, _ in result.refused] == ["0000000001.json"]
    assert "malformed (a field holds what a report does not" in result.refused[0][1]
    with FleetDatabase(tmp_path / "fleet.db").connect() as db:
        assert db.execute("SELECT seq FROM reports").fetchall() == [(2,)]
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1  # nothing of the refused one


def test_an_inventory_of_thousands_of_devices_loads(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from updater.sealed import device_id
    from updater.yamlfile import MAX_FILE_BYTES

    raw = (Encoding.Raw, PublicFormat.Raw)
    entries = []
    for n in range(5000):
        kem = X25519PrivateKey.generate().public_key().public_bytes(*raw)
        signing = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes(*raw)).decode()
        entries.append(f"- {{device: {device_id('x25519', kem)}, site: site-{n % 40}, profile: x86_64-cpu, kem: x25519, "
                       f"public_key: {base64.b64encode(kem).decode()}, signing_key: {signing}, enrolled: '2026-11-01T00:00:00+00:00'}}\n")
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n" + "".join(entries))
    assert path.stat().st_size > MAX_FILE_BYTES  # larger than a spec may be: an inventory has a bound of its own
    devices = Inventory(path).devices()
    assert len(devices) == 5000 and all(d.report_key() is not None for d in devices[:10])


def test_a_medium_that_cannot_take_reports_is_said_once_and_never_holds_up_an_install(tmp_path: Path,
                                                                                       bundles: dict[str, Path]) -> None:
    from bundler.export import export
    from updater.watch import Watcher

    installer, _ = enrolled(tmp_path, bundles, FakeEngine())
    watched = tmp_path / "media"
    export([bundles["1.0.0"]], watched / "stick")
    (watched / "stick" / REPORTS_FOLDER).write_text("a file where the reports folder goes")  # as a full or read-only stick refuses
    lines: list[dict[str, str]] = []
    watcher = Watcher(installer, watched, say=lambda **fields: lines.append(fields), reports=Reports(installer, now=Clock()))
    assert watcher.scan() == 1
    assert installer.apps.states()["demo"].current is not None  # installed all the same
    refused = [line for line in lines if line["event"] == "reports-not-written"]
    assert len(refused) == 1 and refused[0]["fault"] == "delivery" and "not a folder" in refused[0]["error"]
    assert watcher.scan() == 0 and len([line for line in lines if line["event"] == "reports-not-written"]) == 1  # said once
    assert len(Reports(installer).kept()) == 1  # the report waits on the device for the next medium


def signed_report(installer: Installer, folder: Path, seq: int, **fields: object) -> None:
    """A report the device signs with its own key, as written by hand: ``fields`` replace the made one's."""
    made = Reports(installer, now=Clock()).make()
    assert made is not None
    body = json.dumps(payload(made) | {"seq": seq, **fields}).encode()
    envelope = Envelope(body, "application/vnd.sealift.report.v1+json", {})
    envelope.sign(installer.identity.signer())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{seq:010d}.json").write_text(json.dumps(envelope.to_dict()))


def test_signed_reports_that_break_the_rules_are_refused_one_by_one(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer, inventory = enrolled(tmp_path, bundles, FakeEngine())
    folder = tmp_path / "usb" / REPORTS_FOLDER / installer.identity.record()["device"]
    signed_report(installer, folder, 5, events=[{"n": None, "time": None, "kind": None}])  # nothing where a value must be
    signed_report(installer, folder, 6, created="2026-12-01T10:00:00")  # no time zone
    signed_report(installer, folder, 7)
    os.mkfifo(folder / "0000000008.json")  # a pipe: opening it would wait for ever
    (folder / "0000000009.json").symlink_to(folder / "0000000007.json")
    result = FleetDatabase(tmp_path / "fleet.db").import_medium(tmp_path / "usb", Inventory(inventory))
    why = {Path(f).name: reason for f, reason in result.refused}
    assert result.imported == 1 and set(why) == {"0000000005.json", "0000000006.json", "0000000008.json", "0000000009.json"}
    assert "malformed (a field holds what a report does not" in why["0000000005.json"]
    assert "created has no time zone" in why["0000000006.json"]
    assert why["0000000008.json"] == why["0000000009.json"] == "not a regular file"


def test_a_medium_is_never_written_through_a_link(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer, _ = enrolled(tmp_path, bundles, FakeEngine())
    reports = Reports(installer, now=Clock())
    reports.make()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    device = installer.identity.record()["device"]
    planted = tmp_path / "usb" / REPORTS_FOLDER / device
    planted.mkdir(parents=True)
    (planted / ".0000000001.json.partial").symlink_to(victim)  # where the copy is written first
    (planted / "0000000002.json").symlink_to(victim)
    assert reports.to_medium(tmp_path / "usb") == 1
    assert victim.read_text() == "precious" and not (planted / "0000000001.json").is_symlink()
    assert payload(planted / "0000000001.json")["seq"] == 1
    linked = tmp_path / "usb2"
    linked.mkdir()
    (linked / REPORTS_FOLDER).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DeliveryError, match=r"not a folder \(a link, or a file\): reports are not written through it"):
        reports.to_medium(linked)
    assert not (tmp_path / "elsewhere").exists()


def test_the_report_command_reports_even_when_the_engine_does_not_answer(tmp_path: Path, bundles: dict[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from updater.cli import cli as updater_cli

    installer, _ = enrolled(tmp_path, bundles, FakeEngine())
    assert installer.install(bundles["1.0.0"]).committed
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    done = CliRunner().invoke(updater_cli, ["--state-dir", str(installer.state_dir), "report", "--to", str(tmp_path / "usb"), "--json"])
    assert done.exit_code == 0, done.output
    shown = result_of(done.stdout)
    assert shown["seq"] == 1 and shown["events"] == 1 and shown["copied"] == 1
    app = payload(Path(shown["report"]))["apps"]["demo"]
    assert app["version"] == "1.0.0" and app["engine"]["fault"] == "engine" and "does not answer" in app["engine"]["error"]
