"""The fleet view: devices' signed reports taken into an embedded SQLite database, and what they say.

``sealift fleet import SOURCE`` reads the reports a medium brought back
(``sealift-reports/DEVICE/SEQ.json``, see :mod:`updater.reports`) and keeps each one that is
signed by the report key the inventory holds for its device; a report that is malformed or cut
short, signed by another key, from a device the inventory does not know or has revoked, or that
reuses a number already imported with other content (a replay) is refused and counted, never
imported; the same report again is counted as a duplicate. Reports are taken whole or not at all,
in transactions of a few hundred, so an import cut short leaves whole reports only and the next
one goes on.

The database (``fleet.db`` by default) needs nothing running; :func:`fleet_status` summarises it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.devices import Inventory
from bundler.fleet_intake import Intake, Prepared, prepared_files
from updater.errors import Conflict, InputError
from updater.reports import REPORTS_FOLDER
from updater.versions import version_key

__all__ = ["DEFAULT_DB", "FleetDatabase", "Imported", "fleet_status"]

DEFAULT_DB = Path("fleet.db")
_BATCH = 500  # reports per transaction
EXPIRING_DAYS = 14  # metadata that expires sooner is flagged

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
    created TEXT NOT NULL, imported TEXT NOT NULL, source TEXT NOT NULL, site TEXT NOT NULL, profile TEXT NOT NULL, UNIQUE (device, seq));
CREATE TABLE IF NOT EXISTS events (report INTEGER NOT NULL, n INTEGER NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL,
    app TEXT, version TEXT, fault TEXT, detail TEXT, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checks (report INTEGER NOT NULL, time TEXT NOT NULL, app TEXT, version TEXT, check_name TEXT NOT NULL,
    type TEXT NOT NULL, ok INTEGER NOT NULL, after REAL, took REAL);
CREATE TABLE IF NOT EXISTS samples (device TEXT NOT NULL, seq INTEGER NOT NULL, created TEXT NOT NULL, site TEXT NOT NULL,
    profile TEXT NOT NULL, app TEXT NOT NULL, version TEXT, phase TEXT, reason TEXT, fault TEXT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, site TEXT NOT NULL, profile TEXT NOT NULL, seq INTEGER NOT NULL,
    created TEXT NOT NULL, heard TEXT NOT NULL, expires TEXT, free_bytes INTEGER);
CREATE TABLE IF NOT EXISTS refusals (time TEXT NOT NULL, source TEXT NOT NULL, device TEXT, seq INTEGER, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (created);
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
            # WAL: a commit is a write to the log, not a sync of the database; a crash loses at most the last reports
            # imported, which the next import takes again (each is taken whole or not at all)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
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
        files = sorted((p, p.parent.name) for p in folder.glob("*/*.json") if not p.name.startswith("."))
        devices = {d.device: d for d in inventory.devices()}
        result = Imported()
        when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        with self.connect() as db, _batches(db) as batch:
            for path, prepared in prepared_files(files, devices):
                why = _store(db, prepared, source=str(medium), when=when, result=result)
                if why is not None:
                    result.refused.append((str(path), why))
                    db.execute("INSERT INTO refusals VALUES (?, ?, ?, ?, ?)", (when, str(path), path.parent.name, None, why))
                batch()
        return result

    def import_registry(self, where: str, inventory: Inventory, *, plain_http: bool = False, now: dt.datetime | None = None) -> Imported:
        """Take in the reports a registry holds under ``where`` (``REGISTRY/PREFIX``, one repository per
        device): those not imported yet, each read and verified as one from a medium."""
        from bundler.reportsync import device_client, device_repositories
        from updater.errors import Refused
        from updater.reportstore import read_report, report_tags

        ref, found = device_repositories(where, plain_http=plain_http, what="report registry")
        intake = Intake({d.device: d for d in inventory.devices()})
        result = Imported()
        when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        with self.connect() as db, _batches(db) as batch:
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
                            why = _store(db, intake.prepare(read_report(client, tag), where=device), source=where, when=when,
                                         result=result)
                        except Refused as e:  # listed but not there, not a report, or not its digest: this one alone
                            why = e.diagnostics()
                        if why is not None:
                            result.refused.append((shown, why))
                            db.execute("INSERT INTO refusals VALUES (?, ?, ?, ?, ?)", (when, shown, device, int(tag), why))
                        batch()
                finally:
                    client.close()
        return result


def _store(db: sqlite3.Connection, prepared: Prepared | str, *, source: str, when: str, result: Imported) -> str | None:
    """Store one prepared report, whole or not at all; why it was refused, or None. The same report
    again (the digest of its payload) is a duplicate; its number with other content, a replay."""
    if isinstance(prepared, str):
        return prepared
    known = db.execute("SELECT digest FROM reports WHERE device = ? AND seq = ?", (prepared.device, prepared.seq)).fetchone()
    if known is not None:
        if known[0] == prepared.digest:
            result.duplicates += 1
            return None
        return f"report {prepared.seq} of {prepared.device} was imported before with other content: a replay or a forgery"
    db.execute("SAVEPOINT report")
    try:
        _insert(db, prepared, source=source, when=when)
    except (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError, OverflowError) as e:
        # a list or a mapping where a value belongs, or nothing where one must be
        db.execute("ROLLBACK TO report")
        db.execute("RELEASE report")
        return f"signed by {prepared.device} but malformed (a field holds what a report does not: {type(e).__name__})"
    except BaseException:
        db.execute("ROLLBACK TO report")
        raise
    db.execute("RELEASE report")
    result.imported += 1
    return None


@contextmanager
def _batches(db: sqlite3.Connection) -> Iterator[Callable[[], None]]:
    """Transactions of up to _BATCH reports each (the caller calls the one yielded after each): an import
    cut short keeps the batches it committed, whole reports only, and the next import goes on."""
    count = 0

    def after_one() -> None:
        nonlocal count
        count += 1
        if count % _BATCH == 0:
            db.execute("COMMIT")
            db.execute("BEGIN IMMEDIATE")

    db.execute("BEGIN IMMEDIATE")
    try:
        yield after_one
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _insert(db: sqlite3.Connection, p: Prepared, *, source: str, when: str) -> None:
    key = db.execute("INSERT INTO reports (device, seq, digest, created, imported, source, site, profile) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (p.device, p.seq, p.digest, p.created, when, source, p.site, p.profile)).lastrowid
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", ((key, *row) for row in p.events))
    db.executemany("INSERT INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", ((key, *row) for row in p.checks))
    db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   ((p.device, p.seq, p.created, p.site, p.profile, *row) for row in p.samples))
    db.execute(_NEWEST, (p.device, p.site, p.profile, p.seq, p.created, when, p.expires, p.free_bytes))


_NEWEST = """INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET site = excluded.site,
    profile = excluded.profile, seq = excluded.seq, created = excluded.created, heard = excluded.heard, expires = excluded.expires,
    free_bytes = excluded.free_bytes WHERE excluded.seq > devices.seq"""  # the newest report speaks for the device


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
