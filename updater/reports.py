"""Device reports: the journal's news and a look at what runs, numbered per device and signed.

A report is a DSSE envelope (``payloadType`` :data:`PAYLOAD_TYPE`) signed with the device's
Ed25519 report key (:meth:`updater.identity.DeviceIdentity.signer`), over a JSON payload: the
device, its site and profile, the report's number ``seq`` (one up from the last: the fleet sees
gaps, duplicates and replays), when it was made, the journal's events since the last report
(repeats of one event folded into one with a ``count``), and a sample: each application's
release, phase and last reason, each service's status, restarts, CPU time and memory, the
trusted metadata's expiry per role, and the state disk's free space. No value of a secret is in
it: the journal holds none, and the sample reads states and the engine, never an overlay's
secrets.

Reports are kept in ``STATE/reports/`` (``SEQ.json``, ``state.json``), the newest
:data:`KEEP_BYTES` of them, to go up to the site mirror or out on a medium. Their size is bounded
per UTC day (:data:`DAILY_BYTES`): a report carries as many of the waiting events as the day's
allowance leaves room for, the rest wait for the next one, and when the day's allowance is spent
no report is made until the next day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securesystemslib.dsse import Envelope

from updater.durable import fsync_dir, replace_file
from updater.errors import Conflict, DeliveryError, DeviceFault, SealiftError
from updater.lastseen import updater_version
from updater.locks import file_lock
from updater.oci import parse_json

if TYPE_CHECKING:
    from updater.install import Installer

__all__ = ["DAILY_BYTES", "KEEP_BYTES", "PAYLOAD_TYPE", "REPORTS_FOLDER", "Reports", "kept_reports", "pushed_through", "report_name"]

PAYLOAD_TYPE = "application/vnd.sealift.report.v1+json"
DAILY_BYTES = 64 << 10  # what one device's reports may take a day, envelopes and all
KEEP_BYTES = 2 << 20  # the reports a device keeps to send (about a month at the daily bound)
EVERY_S = 3600.0  # a report at least this often while anything runs
REPORTS_FOLDER = "sealift-reports"  # on a medium: REPORTS_FOLDER/DEVICE/SEQ.json
_NEWS = {"committed", "rolled-back", "refused", "install-failed", "rollback-failed", "recover-failed"}  # reported at once


def report_name(seq: int) -> str:
    return f"{seq:010d}.json"


class Reports:
    """``STATE/reports``: makes, keeps and hands out this device's signed reports."""

    def __init__(self, installer: Installer, *, every: float = EVERY_S, daily: int = DAILY_BYTES,
                 now: Callable[[], dt.datetime] | None = None) -> None:
        self.installer = installer
        self.every = every
        self.daily = daily
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    @property
    def dir(self) -> Path:
        return self.installer.state_dir / "reports"

    def due(self) -> bool:
        """Whether a report should be made now: the last is older than ``every``, or an install or a
        rollback ended since."""
        state = self._state()
        made = state.get("made")
        if not made or (self.now() - dt.datetime.fromisoformat(made)).total_seconds() >= self.every:
            return True
        return any(e["kind"] in _NEWS for e in self.installer.journal.since(int(state.get("through", 0))))

    def make(self) -> Path | None:
        """Sign the waiting events and a sample into the next report and keep it; its path, or None when
        today's allowance is spent. DeviceFault when the device is not enrolled or the disk says no."""
        signer = self.installer.identity.signer()
        record = self.installer.identity.record()
        with self._locked():
            state = self._state()
            # one up from every number this device may have used: the state's, the kept reports', the pushed ones'
            seq, through = max(int(state.get("seq", 0)), *(int(p.stem) for p in self.kept()), self._pushed()) + 1, \
                int(state.get("through", 0))
            now = self.now()
            day = now.date().isoformat()
            used = int(state.get("used", 0)) if state.get("day") == day else 0
            events = waiting = self.installer.journal.since(through)
            head = {"type": "sealift-report", "version": 1, "device": record["device"], "site": record.get("site", ""),
                    "profile": record.get("profile", ""), "seq": seq, "created": now.isoformat(timespec="seconds"),
                    "updater": updater_version(), **self._sample()}
            while True:
                carried = _folded(events)
                body = json.dumps({**head, "events": carried, "waiting": len(waiting) - len(events)},
                                  sort_keys=True, separators=(",", ":")).encode()
                envelope = Envelope(body, PAYLOAD_TYPE, {})
                envelope.sign(signer)
                data = json.dumps(envelope.to_dict(), sort_keys=True).encode() + b"\n"
                if used + len(data) <= self.daily or not events:
                    break
                # as many as the allowance leaves room for, by their share of the size; the rest wait for the next report
                events = events[:min(len(events) - 1, len(events) * max(self.daily - used, 0) // len(data))]
            if used + len(data) > self.daily:
                return None
            path = self.dir / report_name(seq)
            try:
                # the number first: a kill before the report is kept leaves a gap the fleet sees, never a number used twice
                replace_file(self.dir / "state.json", json.dumps({**state, "seq": seq}).encode())
                replace_file(path, data)
                replace_file(self.dir / "state.json", json.dumps({
                    "seq": seq, "through": events[-1]["n"] if events else through, "day": day, "used": used + len(data),
                    "made": now.isoformat(timespec="seconds")}).encode())
            except OSError as e:
                raise DeviceFault(f"{self.dir}: cannot keep a report ({e.strerror})") from e
            if events:
                self.installer.journal.forget(events[-1]["n"])
            self._prune()
        return path

    def kept(self) -> list[Path]:
        """The reports kept on the device, oldest first."""
        return kept_reports(self.dir)

    def to_medium(self, medium: Path, *, bound: int = 4 * KEEP_BYTES) -> int:
        """Copy the kept reports a medium lacks (or holds cut short) into ``medium/sealift-reports/DEVICE/``,
        each whole or not at all; how many. Nothing is written through a link the medium holds. A
        DeliveryError (naming the medium) when it is full or read-only, or past ``bound`` bytes of this
        device's reports on it: the rest stay for the next medium."""
        copied = 0
        try:
            medium.mkdir(parents=True, exist_ok=True)  # `report --to` a folder not made yet
            folder = _real_folder(_real_folder(medium / REPORTS_FOLDER) / self.installer.identity.record()["device"])
            there = {e.name: e.stat(follow_symlinks=False).st_size for e in os.scandir(folder) if e.is_file(follow_symlinks=False)}
            size = sum(there.values())
            for report in self.kept():
                if there.get(report.name) == report.stat().st_size:  # there whole (each pass asks: no reading)
                    continue
                data = report.read_bytes()
                size += len(data)
                if size > bound:
                    raise DeliveryError(f"{folder}: holds {bound} bytes of this device's reports, its bound; the rest wait")
                _write_whole(folder, report.name, data)
                copied += 1
        except OSError as e:
            reason = "the medium is full" if e.errno == 28 else e.strerror or str(e)
            raise DeliveryError(f"{medium}: cannot write reports to it ({reason}); {copied} written, the rest wait") from e
        return copied

    def push(self, target: str, *, plain_http: bool = False) -> int:
        """Push the kept reports not pushed yet, oldest first, to the device's repository under ``target``
        (``REGISTRY/PREFIX``: ``PREFIX/DEVICE``, see :mod:`updater.reportstore`); how many were new
        there. A DeliveryError stops it, and the next push goes on from there."""
        from updater.registry import Retry, connect
        from updater.reportstore import push_report

        device = self.installer.identity.record()["device"]
        mark = self.dir / "pushed"
        pushed = self._pushed()
        waiting = [p for p in self.kept() if int(p.stem) > pushed]
        if not waiting:
            return 0
        # one quick retry: reports wait for the next pass, and a pass must not wait on them
        client = connect(f"{target.rstrip('/')}/{device}", plain_http=plain_http, what="report mirror", retry=Retry(delays=(1.0,)))
        new, taken = 0, []
        try:
            for report in waiting:
                try:
                    new += push_report(client, int(report.stem), report.read_bytes())
                except Conflict:  # its number holds other content there: pushing it again would change nothing
                    taken.append(int(report.stem))
                replace_file(mark, report.stem.encode())
        except OSError as e:
            raise DeviceFault(f"{self.dir}: cannot read or mark a report ({e.strerror})") from e
        finally:
            client.close()
        if taken:
            raise Conflict(f"report mirror {target}: report(s) {', '.join(map(str, taken))} of this device are there with "
                           f"other content (a device restored from a copy, or someone else's push); {new} pushed, those left")
        return new

    def _pushed(self) -> int:
        return pushed_through(self.dir)

    def _sample(self) -> dict[str, Any]:
        """What runs now, as a report shows it; what the engine cannot tell is said, not raised."""
        installer = self.installer
        apps: dict[str, Any] = {}
        for name, state in installer.apps.states().items():
            app: dict[str, Any] = {"phase": state.phase.value, "reason": state.reason, "fault": state.fault}
            if state.current is not None:
                app.update(version=state.current.version, overlay=state.current.overlay, slot=state.current.slot)
                try:
                    containers = installer.runtime.containers(name, state.current.slot)
                    usage = installer.runtime.usage(name, state.current.slot)
                except SealiftError as e:
                    app["engine"] = {"fault": e.fault, "error": e.diagnostics()}
                else:
                    app["services"] = {service: {"status": c.status, "restarts": c.restarts, **(
                        {"cpu_seconds": usage[service].cpu_seconds, "memory_bytes": usage[service].memory_bytes}
                        if service in usage else {})} for service, c in containers.items()}
            if state.previous is not None:
                app["previous"] = state.previous.version
            apps[name] = app
        disk = shutil.disk_usage(installer.state_dir)
        return {"apps": apps, "metadata_expires": installer.trust.expiries(),
                "disk": {"free_bytes": disk.free, "total_bytes": disk.total}}

    def _state(self) -> dict[str, Any]:
        path = self.dir / "state.json"
        try:
            data = parse_json(path.read_bytes(), str(path), DeviceFault)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise DeviceFault(f"{path}: damaged ({type(e).__name__}); move it away: reports are then numbered on from the "
                              "newest kept or pushed") from e
        return data if isinstance(data, dict) else {}

    def _prune(self) -> None:
        """Keep the newest reports up to KEEP_BYTES."""
        kept = self.kept()
        total = sum(p.stat().st_size for p in kept)
        for old in kept[:-1]:
            if total <= KEEP_BYTES:
                break
            total -= old.stat().st_size
            with contextlib.suppress(OSError):
                old.unlink()

    def _locked(self) -> Any:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return file_lock(self.dir / "lock", wait=True)


def kept_reports(folder: Path) -> list[Path]:
    """The reports kept in ``folder`` (``STATE/reports``), oldest first."""
    try:
        return sorted(p for p in folder.iterdir() if p.name[:1].isdigit() and p.suffix == ".json")
    except FileNotFoundError:
        return []


def pushed_through(folder: Path) -> int:
    """The number of the newest report ``folder``'s device pushed to a registry (0: none)."""
    try:
        return int((folder / "pushed").read_text())
    except (OSError, ValueError):
        return 0


def _real_folder(path: Path) -> Path:
    """``path``, a folder made if missing; a DeliveryError if it is a link or anything but a folder."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise DeliveryError(f"{path}: not a folder (a link, or a file): reports are not written through it")
    return path


def _write_whole(folder: Path, name: str, data: bytes) -> None:
    """Write ``folder/name`` under a temporary name, synced, then renamed: never through a link."""
    temporary = folder / f".{name}.partial"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a write cut short, or planted: a link is removed, not followed
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, folder / name)
    fsync_dir(folder)


def _folded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events in order, each run of repeats (the same kind and fields) folded into its last, with
    ``count`` and the ``first`` time."""
    folded: list[dict[str, Any]] = []
    for event in events:
        same = {k: v for k, v in event.items() if k not in ("n", "time")}
        if folded and {k: v for k, v in folded[-1].items() if k not in ("n", "time", "count", "first")} == same:
            last = folded[-1]
            folded[-1] = {**event, "count": last.get("count", 1) + 1, "first": last.get("first", last["time"])}
        else:
            folded.append(event)
    return folded


