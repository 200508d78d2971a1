"""An application's two release slots and the state file that says what each holds.

In an application's directory (``STATE/apps/NAME``, see :mod:`updater.apps`), ``slots/a`` and
``slots/b`` each hold one staged release (read-only); the state file ``state.json`` says which
slot is current, what is being tried, and what happened before. It is replaced atomically (temp
file, fsync, rename, fsync of the directory), so after a crash it is either the old state or the
new one. ``install.lock`` keeps two updaters from acting on the application at once.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from updater.durable import replace_file
from updater.errors import Conflict, DeviceFault
from updater.locks import file_lock
from updater.oci import parse_json

__all__ = ["SLOTS", "DeviceState", "Phase", "Release", "Serving", "Slots"]

SLOTS = ("a", "b")
_STATE = "state.json"
_HISTORY = 50
_FAILED_KEPT = 100  # failed releases remembered (not retried unless forced); the oldest are forgotten first


class Phase(enum.StrEnum):
    IDLE = "idle"
    STAGED = "staged"
    TRYING = "trying"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"


@dataclass(frozen=True, kw_only=True)
class Release:
    """A release staged in a slot."""

    name: str
    version: str
    profile: str
    digest: str
    slot: str
    overlay: str = ""  # the version of the site overlay staged with it, if any
    overlay_digest: str = ""


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    """What the device runs and what it is doing; replaced whole, never edited in place."""

    phase: Phase = Phase.IDLE
    current: Release | None = None
    previous: Release | None = None  # still staged in the other slot: what `rollback` returns to
    candidate: Release | None = None
    reason: str = ""
    fault: str = ""  # the fault family of what went wrong last (docs/errors.md); empty when the last step succeeded
    failed: tuple[str, ...] = ()  # digests of releases that failed their health checks
    interrupted: dict[str, int] = field(default_factory=dict)  # tries of a release cut short by a crash, by its failure key
    history: tuple[dict[str, str], ...] = field(default=())

    def failed_as_next(self, digest: str) -> bool:
        """Whether installing ``digest`` now (with the running release's overlay carried over) failed before."""
        carried = self.current.overlay_digest if self.current is not None else ""
        return digest in self.failed or (bool(carried) and f"{digest}+{carried}" in self.failed)

    def inactive_slot(self) -> str:
        """The slot a new release is staged in: never the current one."""
        return "b" if self.current is not None and self.current.slot == "a" else "a"

    def with_event(self, **changes: Any) -> DeviceState:
        """A new state with ``changes``, recorded in the history."""
        new = replace(self, **{"fault": "", **changes})
        new = replace(new, failed=new.failed[-_FAILED_KEPT:])
        event = {"phase": new.phase.value, "reason": new.reason, **({"fault": new.fault} if new.fault else {})}
        if new.candidate is not None:
            event["release"] = f"{new.candidate.name} {new.candidate.version}"
        return replace(new, history=(*self.history, event)[-_HISTORY:])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["failed"] = list(self.failed)
        data["history"] = list(self.history)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceState:
        def release(value: Any) -> Release | None:
            return Release(**value) if value is not None else None

        return cls(
            phase=Phase(data["phase"]),
            current=release(data.get("current")),
            previous=release(data.get("previous")),
            candidate=release(data.get("candidate")),
            reason=str(data.get("reason", "")),
            fault=str(data.get("fault", "")),
            failed=tuple(data.get("failed", ())),
            interrupted={str(k): int(v) for k, v in dict(data.get("interrupted", {})).items()},
            history=tuple(data.get("history", ())),
        )


class Slots:
    """An application's slots and state file, in its directory ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise DeviceFault(f"unknown slot {slot!r}")
        return self.root / "slots" / slot

    def exists(self) -> bool:
        """Whether the application has a state file (it has been installed, or an install of it was tried)."""
        return (self.root / _STATE).is_file()

    def load(self) -> DeviceState:
        path = self.root / _STATE
        try:
            return DeviceState.from_json(parse_json(path.read_bytes(), str(path), DeviceFault))
        except FileNotFoundError:
            return DeviceState()
        except (ValueError, KeyError, TypeError) as e:
            raise DeviceFault(f"{path}: damaged state file ({e}); the updater will not guess what runs") from e

    def save(self, state: DeviceState) -> None:
        """Replace the state file atomically and durably."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(self.root / _STATE, (json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
        except OSError as e:
            raise DeviceFault(f"{self.root / _STATE}: cannot record the state ({e.strerror})") from e

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the install lock, or fail at once if another updater holds it."""
        with ExitStack() as stack:
            try:
                stack.enter_context(file_lock(self.root / "install.lock", wait=False))
            except BlockingIOError:
                raise Conflict(f"{self.root.name}: another sealift-updater is installing or rolling it back; nothing was changed") from None
            yield


@dataclass(frozen=True)
class Serving:
    """What the engine runs of the committed release, at one look: each service's container status."""

    release: Release | None
    services: dict[str, str]

    @property
    def ok(self) -> bool:
        """Nothing is committed, or every service of the committed release runs."""
        return self.release is None or (bool(self.services) and all(s == "running" for s in self.services.values()))

    def __str__(self) -> str:
        if self.release is None:
            return "nothing installed"
        what = f"{self.release.name} {self.release.version} (slot {self.release.slot})"
        if self.ok:
            return f"{what}: serving"
        found = ", ".join(f"{name} {status}" for name, status in sorted(self.services.items()))
        return f"{what} is committed but not serving ({found})"

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "services": self.services}
