"""The fleet view: devices' signed reports taken into an embedded SQLite database, and what they say.

``sealift fleet import SOURCE`` reads the reports a medium brought back
(``sealift-reports/DEVICE/SEQ.json``, see :mod:`updater.reports`) and keeps each one that is
signed by the report key the inventory holds for its device; a report that is malformed or cut
short, signed by another key, from a device the inventory does not know or has revoked, or that
reuses a number already imported with other content (a replay) is refused and counted, never
imported; the same report again is counted as a duplicate. Each report is taken in one
transaction, so an import cut short leaves whole reports only and the next one goes on.

The database (``fleet.db`` by default) needs nothing running; :func:`fleet_status` summarises it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import FormatError, VerificationError

from bundler.devices import Device, Inventory
from updater.errors import Conflict, InputError
from updater.reports import PAYLOAD_TYPE, REPORTS_FOLDER
from updater.versions import version_key

__all__ = ["DEFAULT_DB", "FleetDatabase", "Imported", "fleet_status"]

DEFAULT_DB = Path("fleet.db")
MAX_REPORT_BYTES = 256 << 10  # a report is bounded on the device far below this
EXPIRING_DAYS = 14  # metadata that expires sooner is flagged

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (device TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL, created TEXT NOT NULL,
    imported TEXT NOT NULL, source TEXT NOT NULL, site TEXT NOT NULL, profile TEXT NOT NULL, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS events (device TEXT NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL, time TEXT NOT NULL,
    kind TEXT NOT NULL, app TEXT, version TEXT, reason TEXT, fault TEXT, count INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checks (device TEXT NOT NULL, seq INTEGER NOT NULL, time TEXT NOT NULL, app TEXT, version TEXT,
    profile TEXT NOT NULL, check_name TEXT NOT NULL, type TEXT NOT NULL, ok INTEGER NOT NULL, after REAL, took REAL);
CREATE TABLE IF NOT EXISTS samples (device TEXT NOT NULL, seq INTEGER NOT NULL, created TEXT NOT NULL, site TEXT NOT NULL,
    profile TEXT NOT NULL, app TEXT NOT NULL, version TEXT, phase TEXT, reason TEXT, fault TEXT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, site TEXT NOT NULL, profile TEXT NOT NULL, seq INTEGER NOT NULL,
    created TEXT NOT NULL, heard TEXT NOT NULL, expires TEXT, free_bytes INTEGER);
CREATE TABLE IF NOT EXISTS refusals (time TEXT NOT NULL, source TEXT NOT NULL, device TEXT, seq INTEGER, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (created);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind);
"""


@dataclass
class Imported:
    """What an import did: reports taken, the same ones seen again, and each refusal with its reason."""

    imported: int = 0
    duplicates: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    def to_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "duplicates": self.duplicates,
                "refused": [{"file": f, "reason": r} for f, r in self.refused]}


class FleetDatabase:
    """``fleet.db``: opened (and made) on use; a corrupt file is an InputError, a locked one a Conflict."""

    def __init__(self, path: Path, *, wait: float = 10.0) -> None:
        self.path = path
        self.wait = wait  # seconds to wait for another sealift holding the database

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = sqlite3.connect(self.path, timeout=self.wait, isolation_level=None)
        except sqlite3.Error as e:
            raise InputError(f"{self.path}: cannot open the fleet database ({e})") from e
        try:
            connection.executescript(_SCHEMA)
            yield connection
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise Conflict(f"{self.path}: the fleet database is locked by another sealift; try again when it ends") from e
            raise InputError(f"{self.path}: the fleet database cannot be used ({e})") from e
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: not a fleet database, or a damaged one ({e}); keep it aside and import again") from e
        finally:
            connection.close()

    def import_medium(self, medium: Path, inventory: Inventory, *, now: dt.datetime | None = None) -> Imported:
        """Take in the reports on ``medium`` (its ``sealift-reports`` folder, or the folder itself)."""
        folder = medium / REPORTS_FOLDER if (medium / REPORTS_FOLDER).is_dir() else medium
        if not folder.is_dir():
            raise InputError(f"{medium}: no {REPORTS_FOLDER} folder: not a medium that carries device reports")
        files = sorted(p for p in folder.glob("*/*.json") if not p.name.startswith("."))
        devices = {d.device: d for d in inventory.devices()}
        result = Imported()
        when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        with self.connect() as db:
            for path in files:
                why: str | None
                try:
                    data = _read(path)
                except OSError as e:
                    why = f"cannot be read ({e.strerror})"
                else:
                    why = self._take(db, data, devices, source=str(medium), when=when, result=result, where=path.parent.name)
                if why is not None:
                    result.refused.append((str(path), why))
                    db.execute("INSERT INTO refusals VALUES (?, ?, ?, ?, ?)", (when, str(path), path.parent.name, None, why))
        return result

    def import_registry(self, where: str, inventory: Inventory, *, plain_http: bool = False, now: dt.datetime | None = None) -> Imported:
        """Take in the reports a registry holds under ``where`` (``REGISTRY/PREFIX``, one repository per
        device): those not imported yet, each read and verified as one from a medium."""
        from bundler.reportsync import device_client, device_repositories
        from updater.errors import ContentMismatch
        from updater.reportstore import read_report, report_tags

        ref, found = device_repositories(where, plain_http=plain_http, what="report registry")
        devices = {d.device: d for d in inventory.devices()}
        result = Imported()
        when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        with self.connect() as db:
            for device in found:
                client = device_client(ref, device, plain_http=plain_http, what="report registry")
                try:
                    known = {seq for (seq,) in db.execute("SELECT seq FROM reports WHERE device = ?", (device,))}
                    for tag in report_tags(client):
                        if int(tag) in known:
                            result.duplicates += 1
                            continue
                        shown = f"{ref.host}/{ref.repository}/{device}:{tag}"
                        try:
                            why = self._take(db, read_report(client, tag), devices, source=where, when=when, result=result,
                                             where=device)
                        except ContentMismatch as e:
                            why = e.diagnostics()
                        if why is not None:
                            result.refused.append((shown, why))
                            db.execute("INSERT INTO refusals VALUES (?, ?, ?, ?, ?)", (when, shown, device, int(tag), why))
                finally:
                    client.close()
        return result

    def _take(self, db: sqlite3.Connection, data: bytes, devices: dict[str, Device], *, source: str, when: str,
              result: Imported, where: str) -> str | None:
        """Import one report's bytes; why it was refused, or None."""
        checked = _checked(data, devices, where=where)
        if isinstance(checked, str):
            return checked
        report, digest = checked
        device, seq = report["device"], report["seq"]
        db.execute("BEGIN IMMEDIATE")
        try:
            known = db.execute("SELECT digest FROM reports WHERE device = ? AND seq = ?", (device, seq)).fetchone()
            if known is not None:
                db.execute("ROLLBACK")
                if known[0] == digest:
                    result.duplicates += 1
                    return None
                return f"report {seq} of {device} was imported before with other content: a replay or a forgery"
            _insert(db, report, digest, source=source, when=when)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        result.imported += 1
        return None


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_REPORT_BYTES + 1)
    return data


def _checked(data: bytes, devices: dict[str, Device], *, where: str) -> tuple[dict[str, Any], str] | str:
    """The report an envelope holds and its digest, once its signature is the device's; else why not."""
    if len(data) > MAX_REPORT_BYTES:
        return f"larger than the {MAX_REPORT_BYTES} bytes a report may have"
    try:
        envelope = Envelope.from_dict(json.loads(data))
        report = json.loads(envelope.payload)
    except (ValueError, KeyError, TypeError, FormatError):
        return "not a signed report (malformed or cut short)"
    if envelope.payload_type != PAYLOAD_TYPE or not isinstance(report, dict) or report.get("type") != "sealift-report":
        return "not a Sealift device report"
    device_id = report.get("device")
    device = devices.get(device_id) if isinstance(device_id, str) else None
    if device is None:
        return f"from a device the inventory does not know ({str(device_id)[:40]})"
    if device_id != where:
        return f"claims to be from {device_id} but was filed under {where[:40]}"
    if device.revoked is not None:
        return f"from {device_id}, revoked on {device.revoked}"
    key = device.report_key()
    if key is None:
        return f"{device_id} has no report key in the inventory: add its enrollment record again (`sealift devices add`)"
    try:
        envelope.verify([key], 1)
    except VerificationError:
        return f"not signed by {device_id}'s report key: forged or altered"
    problem = _shape(report)
    if problem is not None:
        return f"signed by {device_id} but malformed ({problem})"
    return report, hashlib.sha256(envelope.payload).hexdigest()


def _shape(report: dict[str, Any]) -> str | None:
    if not isinstance(report.get("seq"), int) or report["seq"] < 1:
        return "seq is not a positive number"
    try:
        dt.datetime.fromisoformat(str(report.get("created")))
    except ValueError:
        return "created is not a time"
    if not isinstance(report.get("events"), list) or not isinstance(report.get("apps"), dict):
        return "no events or apps"
    return None


def _insert(db: sqlite3.Connection, report: dict[str, Any], digest: str, *, source: str, when: str) -> None:
    device, seq, created = report["device"], report["seq"], report["created"]
    site, profile = str(report.get("site", "")), str(report.get("profile", ""))
    db.execute("INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (device, seq, digest, created, when, source, site, profile))
    for event in report["events"]:
        if not isinstance(event, dict):
            continue
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
            device, seq, int(event.get("n", 0)), str(event.get("time", created)), str(event.get("kind", "")), event.get("app"),
            event.get("version"), event.get("reason"), event.get("fault"), int(event.get("count", 1)), json.dumps(event)))
        for check in event.get("health") or ():
            if isinstance(check, dict):
                db.execute("INSERT INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                    device, seq, str(event.get("time", created)), event.get("app"), event.get("version"), profile,
                    str(check.get("check", "")), str(check.get("type", "")), int(bool(check.get("ok"))), check.get("after"),
                    check.get("took")))
    for name, app in report["apps"].items():
        if isinstance(app, dict):
            db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                device, seq, created, site, profile, str(name), app.get("version"), app.get("phase"), app.get("reason"),
                app.get("fault"), json.dumps(app)))
    expires = _mapping(report.get("metadata_expires"))
    soonest = min((str(v) for v in expires.values()), default=None)
    disk = _mapping(report.get("disk"))
    newer = db.execute("SELECT seq FROM devices WHERE device = ?", (device,)).fetchone()
    if newer is None or newer[0] < seq:  # the newest report speaks for the device
        db.execute("INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (device, site, profile, seq, created, when, soonest, disk.get("free_bytes")))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def fleet_status(db: sqlite3.Connection, inventory: Inventory, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """What the reports say of the fleet: per site, profile, application and release how many devices
    run it; who is behind the newest release seen; each device's last report; failing devices with
    their reasons; metadata expiring within EXPIRING_DAYS; devices never heard from."""
    now = now or dt.datetime.now(dt.UTC)
    latest = db.execute("""SELECT s.device, s.site, s.profile, s.app, s.version, s.phase, s.reason, s.fault, d.created, d.expires
                           FROM samples s JOIN devices d ON d.device = s.device AND d.seq = s.seq
                           ORDER BY s.site, s.profile, s.app, s.device""").fetchall()
    running: dict[str, dict[str, int]] = {}
    newest: dict[str, str] = {}
    for _, site, profile, app, version, *_ in latest:
        if version:
            key = f"{site} {profile} {app}"
            running.setdefault(key, {})
            running[key][version] = running[key].get(version, 0) + 1
            newest[app] = max(newest.get(app, version), version, key=_version_key)
    behind = [{"device": d, "app": app, "version": v, "newest": newest[app]} for d, _, _, app, v, *_ in latest
              if v and _version_key(v) < _version_key(newest[app])]
    failing = [{"device": d, "app": app, "version": v, "phase": phase, "reason": reason, "fault": fault}
               for d, _, _, app, v, phase, reason, fault, *_ in latest if phase in ("rolled-back", "rolling-back") or fault]
    soon = (now + dt.timedelta(days=EXPIRING_DAYS)).isoformat()
    expiring = [{"device": d, "site": s, "expires": e} for d, s, e in
                db.execute("SELECT device, site, expires FROM devices WHERE expires IS NOT NULL AND expires < ? ORDER BY expires",
                           (soon,)).fetchall()]
    heard = {d: {"site": s, "profile": p, "seq": q, "created": c, "heard": h} for d, s, p, q, c, h in
             db.execute("SELECT device, site, profile, seq, created, heard FROM devices ORDER BY site, device").fetchall()}
    silent = [{"device": d.device, "site": d.site} for d in inventory.devices() if d.revoked is None and d.device not in heard]
    refused = db.execute("SELECT COUNT(*) FROM refusals").fetchone()[0]
    return {"running": running, "newest": newest, "behind": behind, "failing": failing, "expiring": expiring,
            "devices": heard, "never_heard": silent, "refused_reports": refused}


def _version_key(version: str) -> tuple[Any, ...]:
    try:
        return version_key(version)
    except ValueError:  # a device's own claim, signed but not checked: ranks below every version
        return (-1, -1, -1), 0, ()
