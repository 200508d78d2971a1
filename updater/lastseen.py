"""What the device last saw, kept for ``status`` and the metrics: each source's last poll
(``STATE/poll.json``, written by the service) and each application's last health checks
(``STATE/apps/APP/health.json``, written after an install or a rollback). Best effort: a disk
that says no loses the record, never the work it describes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from updater.durable import replace_file
from updater.errors import SealiftError
from updater.locks import file_lock

__all__ = ["last_health", "last_polls", "record_health", "record_poll", "trusted_expiries", "updater_version"]

_POLL_FILE = "poll.json"
_HEALTH_FILE = "health.json"


def last_polls(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Each source's last poll: ``{"time", "ok"[, "fault", "error"]}`` (none when the service never polled)."""
    return _json(state_dir / _POLL_FILE)


def record_poll(state_dir: Path, source: str, *, when: dt.datetime, error: SealiftError | None = None) -> None:
    poll: dict[str, Any] = {"time": when.isoformat(timespec="seconds"), "ok": error is None}
    if error is not None:
        poll.update(fault=error.fault, error=error.diagnostics()[:400])
    with contextlib.suppress(OSError, SealiftError), file_lock(state_dir / "poll.lock", wait=True):
        replace_file(state_dir / _POLL_FILE, json.dumps({**last_polls(state_dir), source: poll}, sort_keys=True).encode())


def last_health(state_dir: Path, app: str) -> dict[str, Any]:
    """The checks of application ``app``'s last install or rollback: ``{"version", "time", "ok", "checks"}``."""
    return _json(state_dir / "apps" / app / _HEALTH_FILE)


def record_health(state_dir: Path, app: str, record: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        replace_file(state_dir / "apps" / app / _HEALTH_FILE, json.dumps(record, sort_keys=True).encode())


def trusted_expiries(state_dir: Path) -> dict[str, str]:
    """When each top-level role's trusted metadata expires (ISO 8601), as far as the device holds it
    (read as plain JSON: ``status`` needs no TUF library to say it)."""
    found = {}
    for role in ("root", "targets", "snapshot", "timestamp"):
        expires = _json(state_dir / "trust" / f"{role}.json").get("signed", {})
        value = expires.get("expires") if isinstance(expires, dict) else None
        if isinstance(value, str):
            found[role] = value
    return found


def updater_version() -> str:
    """The version of the installed updater, as `status` and the reports say it."""
    try:
        return version("sealift")
    except PackageNotFoundError:
        return "unknown"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
