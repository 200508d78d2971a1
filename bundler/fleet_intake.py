"""Reports on their way into the fleet database: parsed, verified against the inventory, and made
into the rows the database takes (:mod:`bundler.fleet` stores them).

What is done here needs no database, so a large import does it in a second process while the first
one writes (:func:`prepared_files`): parsing and verifying a report costs about as much as storing
it, and the two then overlap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import FormatError, VerificationError
from securesystemslib.signer import SSlibKey

from bundler.devices import Device
from updater.reports import PAYLOAD_TYPE

try:  # the build extra brings a faster JSON parser: a large import spends a third of its time parsing
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - the same JSON, read by the standard library
    _loads = json.loads  # type: ignore[assignment]

__all__ = ["MAX_REPORT_BYTES", "Intake", "Prepared", "prepared_files"]

MAX_REPORT_BYTES = 256 << 10  # a report is bounded on the device far below this
PARALLEL_FROM = 200  # reports in one import from which a second process parses and verifies them
_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A verified report as rows: ``events`` and ``checks`` lack the report's key, which the database gives."""

    device: str
    seq: int
    digest: str
    created: str
    site: str
    profile: str
    events: list[tuple[Any, ...]]
    checks: list[tuple[Any, ...]]
    samples: list[tuple[Any, ...]]
    expires: str | None
    free_bytes: float | None


class Intake:
    """Checks reports against the inventory's ``devices``: their device, its report key, their shape."""

    def __init__(self, devices: dict[str, Device]) -> None:
        self.devices = devices
        self._keys: dict[str, SSlibKey | None] = {}

    def prepare(self, data: bytes, *, where: str) -> Prepared | str:
        """The report ``data`` holds as rows, or why it is refused. ``where`` is the device it was
        filed under (its folder on a medium, its repository in a registry)."""
        parsed = _parsed(data)
        if isinstance(parsed, str):
            return parsed
        envelope, report = parsed
        why = self._refusal(envelope, report, where=where)
        if why is not None:
            return why
        try:
            return _rows(report, hashlib.sha256(envelope.payload).hexdigest())
        except (TypeError, ValueError, AttributeError) as e:  # a health list that is no list, say
            return f"signed by {report['device']} but malformed ({type(e).__name__} in its fields)"

    def _refusal(self, envelope: Envelope, report: dict[str, Any], *, where: str) -> str | None:
        device_id = report.get("device")
        device = self.devices.get(device_id) if isinstance(device_id, str) else None
        if device is None:
            return f"from a device the inventory does not know ({str(device_id)[:40]})"
        if device_id != where:
            return f"claims to be from {device_id} but was filed under {where[:40]}"
        if device.revoked is not None:
            return f"from {device_id}, revoked on {device.revoked}"
        if device.device not in self._keys:
            self._keys[device.device] = device.report_key()
        key = self._keys[device.device]
        if key is None:
            return f"{device_id} has no report key in the inventory: add its enrollment record again (`sealift devices add`)"
        try:
            envelope.verify([key], 1)
        except VerificationError:
            return f"not signed by {device_id}'s report key: forged or altered"
        problem = _shape(report)
        return f"signed by {device_id} but malformed ({problem})" if problem is not None else None


def prepared_files(files: list[tuple[Path, str]], devices: dict[str, Device]) -> Iterator[tuple[Path, Prepared | str]]:
    """Each file (with the device it was filed under) prepared, in order; in a second process when
    there are many and a second CPU."""
    if len(files) < PARALLEL_FROM or (os.cpu_count() or 1) < 2:
        intake = Intake(devices)
        for path, where in files:
            yield path, _prepared_file(intake, path, where)
        return
    # spawned, not forked: the importing process may hold threads (a progress bar, a test's server)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_start_worker,
                             initargs=(devices,)) as pool:
        yield from zip((path for path, _ in files), pool.map(_prepare_in_worker, files, chunksize=_CHUNK), strict=True)


_WORKER: Intake | None = None  # in a worker process: set once by its initializer


def _start_worker(devices: dict[str, Device]) -> None:
    global _WORKER
    _WORKER = Intake(devices)


def _prepare_in_worker(item: tuple[Path, str]) -> Prepared | str:
    assert _WORKER is not None, "the worker was not started"
    return _prepared_file(_WORKER, *item)


def _prepared_file(intake: Intake, path: Path, where: str) -> Prepared | str:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a link, a pipe, a device: never opened
            return "not a regular file"
        with open(path, "rb") as f:
            data = f.read(MAX_REPORT_BYTES + 1)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return intake.prepare(data, where=where)


def _parsed(data: bytes) -> tuple[Envelope, dict[str, Any]] | str:
    """The envelope and the report it holds (not verified yet); else why it is no report."""
    if len(data) > MAX_REPORT_BYTES:
        return f"larger than the {MAX_REPORT_BYTES} bytes a report may have"
    try:
        envelope = Envelope.from_dict(_loads(data))
        report = _loads(envelope.payload)
    except (ValueError, KeyError, TypeError, FormatError):  # orjson's JSONDecodeError is a ValueError
        return "not a signed report (malformed or cut short)"
    if envelope.payload_type != PAYLOAD_TYPE or not isinstance(report, dict) or report.get("type") != "sealift-report":
        return "not a Sealift device report"
    return envelope, report


def _shape(report: dict[str, Any]) -> str | None:
    if not isinstance(report.get("seq"), int) or report["seq"] < 1:
        return "seq is not a positive number"
    try:
        if dt.datetime.fromisoformat(str(report.get("created"))).tzinfo is None:
            return "created has no time zone"
    except ValueError:
        return "created is not a time"
    if not isinstance(report.get("events"), list) or not isinstance(report.get("apps"), dict):
        return "no events or apps"
    return None


def _rows(report: dict[str, Any], digest: str) -> Prepared:
    """The report as rows, its fields as the device wrote them: a field that holds a list or a
    mapping where a scalar belongs makes SQLite refuse the row, and the report is refused."""
    created = str(report["created"])
    site, profile = str(report.get("site", "")), str(report.get("profile", ""))
    events, checks = [], []
    for event in report["events"]:  # a million of them in a large import: kept to the bare minimum
        if type(event) is not dict:
            continue
        field = event.get
        time_, app, version = field("time", created), field("app"), field("version")
        # what an event says beyond its kind: a reason (installs, rollbacks), else an error (refusals, faults)
        events.append((field("n", 0), time_, field("kind", ""), app, version, field("fault"), field("reason") or field("error"),
                       field("count", 1)))
        for check in field("health") or ():
            if type(check) is dict:
                checks.append((time_, app, version, check.get("check", ""), check.get("type", ""), 1 if check.get("ok") is True else 0,
                               check.get("after"), check.get("took")))
    samples = [(str(name)[:200], _text(app.get("version")), _text(app.get("phase")), _text(app.get("reason")),
                _text(app.get("fault")), json.dumps(app)[:20_000]) for name, app in report["apps"].items() if isinstance(app, dict)]
    expires = _mapping(report.get("metadata_expires"))
    disk = _mapping(report.get("disk"))
    free = disk.get("free_bytes")
    return Prepared(device=report["device"], seq=report["seq"], digest=digest, created=created, site=site, profile=profile,
                    events=events, checks=checks, samples=samples, expires=min((str(v) for v in expires.values()), default=None),
                    free_bytes=float(free) if isinstance(free, int | float) and not isinstance(free, bool) else None)


def _text(value: Any) -> str | None:
    """A field as text (a signed report is still its device's claim: whatever it holds, it is stored as text)."""
    return None if value is None else str(value)[:1000]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
