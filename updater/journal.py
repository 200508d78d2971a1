"""The device's journal: what happened, numbered, until a report carries it away.

``STATE/journal/events.jsonl`` holds one JSON object per line: ``n`` (numbered per device, one up
from the last), ``time``, ``kind`` and the event's fields. Installs, rollbacks, recoveries, the
daemon's polls and media write to it; :mod:`updater.reports` signs what is new into a report, and
the events it carried are then dropped. Recording never stops what is recorded: a full or
read-only disk loses the event (the next one's number shows the gap) and nothing else. The file
is bounded (:data:`MAX_BYTES`): past it, the oldest half goes, which the numbers show as well.
No value of a secret is ever recorded; the fields are releases, reasons, fault classes and the
errors' one-line diagnostics, which name files and causes, never contents.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from updater.durable import replace_file
from updater.errors import SealiftError
from updater.locks import file_lock

__all__ = ["MAX_BYTES", "Journal"]

MAX_BYTES = 1 << 20  # an unreported journal past this loses its oldest half
_FIELD_CHARS = 400  # a field longer than this is cut: an error's diagnostics can quote a long input
_DIR = "journal"
_FILE = "events.jsonl"


class Journal:
    """``STATE/journal``: append under a lock, read from a number on, drop what a report carried."""

    def __init__(self, state_dir: Path, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self.dir = state_dir / _DIR
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    @property
    def path(self) -> Path:
        return self.dir / _FILE

    def record(self, kind: str, **fields: Any) -> int | None:
        """Append an event; its number, or None when it could not be kept (the disk said no)."""
        clean = {key: _bounded(value) for key, value in fields.items() if value not in (None, "")}
        try:
            with self._locked():
                events = self._read()
                n = (events[-1]["n"] if events else self._last_dropped()) + 1
                line = json.dumps({"n": n, "time": self.now().isoformat(timespec="seconds"), "kind": kind, **clean},
                                  sort_keys=True, separators=(",", ":")).encode() + b"\n"
                if self.path.exists() and self.path.stat().st_size + len(line) > MAX_BYTES:
                    half = len(events) // 2  # the oldest half goes (one event alone goes too; unreadable lines always)
                    gone = events[:max(half, 1)]
                    self._rewrite(events[len(gone):], dropped_through=gone[-1]["n"] if gone else n - 1)
                with open(self.path, "a+b") as f:
                    if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                        line = b"\n" + line  # after a write a crash cut short: that tail stays a line of its own
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                return n
        except Exception:  # whatever keeps it from being kept: the event is lost, the work it records goes on
            return None

    def since(self, n: int) -> list[dict[str, Any]]:
        """The events numbered above ``n``, oldest first (a line cut short by a crash is left out)."""
        with self._locked():
            return [e for e in self._read() if e["n"] > n]

    def forget(self, through: int) -> None:
        """Drop the events numbered up to ``through`` (a report holds them now); best effort."""
        with contextlib.suppress(OSError, SealiftError), self._locked():
            events = self._read()
            if any(e["n"] <= through for e in events):
                self._rewrite([e for e in events if e["n"] > through], dropped_through=max(through, self._last_dropped()))

    def _locked(self) -> Any:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return file_lock(self.dir / "lock", wait=True)

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        events = []
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the tail of a write a crash cut short
            if isinstance(event, dict) and isinstance(event.get("n"), int) and isinstance(event.get("kind"), str):
                events.append(event)
        return events

    def _last_dropped(self) -> int:
        """The number of the newest event dropped (by a report or the bound): numbering goes on from it."""
        try:
            return int((self.dir / "dropped").read_text())
        except (OSError, ValueError):
            return 0

    def _rewrite(self, events: list[dict[str, Any]], *, dropped_through: int) -> None:
        replace_file(self.dir / "dropped", str(dropped_through).encode())  # first: a crash between keeps the numbers rising
        replace_file(self.path, b"".join(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() + b"\n" for e in events))


def _bounded(value: Any) -> Any:
    """A field as the journal keeps it: text cut to a bound, numbers and lists of them as they are."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_bounded(v) for v in value[:32]]
    if isinstance(value, dict):
        return {str(k)[:64]: _bounded(v) for k, v in list(value.items())[:32]}
    text = str(value)
    return text if len(text) <= _FIELD_CHARS else text[:_FIELD_CHARS - 1] + "…"
