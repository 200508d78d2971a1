"""The applications a device runs, each with a directory of its own.

``STATE/apps/NAME/`` holds one application's two slots, its state file and its install lock
(:class:`updater.slots.Slots`): installing, rolling back or recovering one application takes only
its lock, so it never waits for, stops or changes another. What applications share has locks of
its own: the trusted metadata (``STATE/lock``), the device's identity, and the bundle store, which
is pruned only while no install is under way (``STATE/apps.lock``: shared by installs, exclusive
for a prune).

A state directory from before applications had their own (``STATE/state.json`` and
``STATE/slots``) is moved into ``STATE/apps/NAME`` on first use, one rename at a time, so a crash
at any point leaves a layout the next start finishes moving. ``STATE/slots`` then stays as a link
to the new place until the application next switches releases: the running containers
bind-mount files from under the old path, and the engine resolves it again when it restarts them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from updater.durable import fsync_dir
from updater.errors import Conflict, DeviceFault, InputError
from updater.locks import file_lock
from updater.names import NAME, closest
from updater.slots import SLOTS, DeviceState, Slots
from updater.stage import slot_holds

__all__ = ["Apps"]

_APPS = "apps"
_LEGACY_STATE, _LEGACY_SLOTS = "state.json", "slots"
_UNNAMED = "state.json.before-apps"  # a legacy state that never named a release: kept for people to read


class Apps:
    """``STATE/apps``: the applications this device holds a state for."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.root = state_dir / _APPS
        self._moved = False

    def names(self) -> list[str]:
        """The applications with a state on this device, sorted (one whose only install was refused
        before anything was recorded has none)."""
        self._move_legacy()
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise DeviceFault(f"{self.root}: cannot list the applications ({e.strerror})") from e
        return sorted(e.name for e in entries if NAME.fullmatch(e.name) and (e / _LEGACY_STATE).is_file())

    def slots(self, name: str) -> Slots:
        """The slots and state of application ``name`` (made on its first install)."""
        if not NAME.fullmatch(name):
            raise InputError(f"{name[:80]!r} is not an application name (lower-case letters, digits, '.', '_', '-')")
        self._move_legacy()
        return Slots(self.root / name)

    def states(self) -> dict[str, DeviceState]:
        """Every application's state, by name."""
        return {name: self.slots(name).load() for name in self.names()}

    def only(self, name: str | None = None) -> str:
        """``name``, or the one application this device runs a release of when it is not given."""
        names = self.names()
        if name is not None:
            if name not in names:
                raise Conflict(f"application {name} is not installed on this device"
                               + (f" ({closest(name, names)})" if names else ""))
            return name
        running = [n for n in names if self.slots(n).load().current is not None]
        if len(running) == 1:
            return running[0]
        if not running:
            raise Conflict("no application is installed on this device")
        raise InputError(f"this device holds {len(running)} applications ({', '.join(running)}); name one")

    @contextmanager
    def installing(self) -> Iterator[None]:
        """Held (shared) through an install of any application: the store is not pruned meanwhile."""
        self._move_legacy()  # first: the move takes this lock exclusively
        with file_lock(self.state_dir / "apps.lock", wait=True, shared=True):
            yield

    @contextmanager
    def alone(self) -> Iterator[bool]:
        """Whether no install of any application is under way; while it says so, none starts."""
        with ExitStack() as stack:
            try:
                stack.enter_context(file_lock(self.state_dir / "apps.lock", wait=False))
            except BlockingIOError:
                yield False
                return
            yield True

    def forget_legacy_link(self, name: str) -> None:
        """Remove ``STATE/slots``, the link left by a move from the single-application layout, once
        ``name``'s containers no longer mount files through it (it has switched releases since)."""
        link = self.state_dir / _LEGACY_SLOTS
        if link.is_symlink() and os.readlink(link) == str(Path(_APPS) / name / _LEGACY_SLOTS):
            link.unlink(missing_ok=True)

    def _move_legacy(self) -> None:
        if self._moved:
            return
        legacy = self.state_dir / _LEGACY_STATE
        if legacy.exists():
            # the old layout's lock: an updater of that layout still installing is waited for
            with file_lock(self.state_dir / "apps.lock", wait=True), file_lock(self.state_dir / "install.lock", wait=True):
                if legacy.exists():
                    self._move(legacy)
        self._moved = True

    def _move(self, legacy: Path) -> None:
        """(1) make ``apps/NAME``; (2) move ``slots`` into it and leave a link; (3) move the state file,
        last: while it is still in its old place, the move is unfinished and the next start resumes it."""
        state = Slots(self.state_dir).load()
        name = _named(state) or _held(self.state_dir / _LEGACY_SLOTS)
        try:
            if name is None:
                legacy.rename(self.state_dir / _UNNAMED)
                return
            target = self.root / name
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            slots = self.state_dir / _LEGACY_SLOTS
            if slots.is_dir() and not slots.is_symlink():
                if (target / _LEGACY_SLOTS).exists():
                    raise DeviceFault(f"{slots} and {target / _LEGACY_SLOTS} both exist; the updater will not guess which "
                                      f"holds {name}")
                slots.rename(target / _LEGACY_SLOTS)
                fsync_dir(target)
            if not slots.is_symlink() and not slots.exists():
                slots.symlink_to(Path(_APPS) / name / _LEGACY_SLOTS)
            legacy.rename(target / _LEGACY_STATE)
            fsync_dir(target)
            fsync_dir(self.state_dir)
        except OSError as e:
            raise DeviceFault(f"{self.state_dir}: cannot move the state into {_APPS}/ ({e.strerror})") from e


def _named(state: DeviceState) -> str | None:
    release = state.current or state.candidate or state.previous
    return release.name if release is not None else None


def _held(slots: Path) -> str | None:
    """The application a legacy slot holds, when the state file names none."""
    for slot in SLOTS:
        held = slot_holds(slots / slot) if slots.is_dir() else None
        if held is not None and NAME.fullmatch(held[0]):
            return held[0]
    return None
