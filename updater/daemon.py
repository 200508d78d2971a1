"""``sealift-updater run``: install what arrives, from removable media and from a site registry.

Each pass looks for bundles and media (OCI layout directories and tar files) in the watched
directory and installs, one at a time, those this device has not installed or seen fail; it polls
the site registry, if one is given, for a newer signed release (see :mod:`updater.poll`);
then it sleeps. It
talks to systemd when started as a ``Type=notify`` service: ``READY=1`` after the first pass,
``WATCHDOG=1`` after each one. Log lines are ``key=value`` pairs, easy to search in journald.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

from updater.errors import Refused, SealiftError
from updater.install import Installer, Outcome, choose, failure_key
from updater.poll import RegistryPoller
from updater.store import offer

__all__ = ["Daemon", "notify"]

WATCHDOG_EVERY_S = 30.0  # while bytes arrive; WatchdogSec in the unit must be longer


def notify(message: str) -> None:
    """Send ``message`` to systemd's notification socket, if this process has one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


class Daemon:
    """Installs what arrives: bundles and media in ``watch``, and releases a site registry offers.

    A pass scans ``watch`` and polls the registry; passes are ``interval`` seconds apart, and
    after a failed poll the wait doubles (up to ``MAX_BACKOFF`` times the interval), each wait
    shifted at random so that a site's devices do not poll in step. Nothing a pass does to the
    network touches the running release.
    """

    MAX_BACKOFF = 16

    def __init__(self, installer: Installer, watch: Path | None, *, poller: RegistryPoller | None = None,
                 interval: float = 30.0, log: Callable[[str], None]) -> None:
        self.installer = installer
        self.watch = watch
        self.poller = poller
        self.interval = interval
        self.log = log
        self.failures = 0
        self.refused: set[tuple[str, ...]] = set()  # (path, its files, the running release[, what it offered]) refused
        self._fed = time.monotonic()
        if poller is not None:
            poller.advance = self._still_alive  # a long download is progress: systemd's watchdog must not kill it

    def run(self, *, once: bool = False) -> SealiftError | None:
        """Serve until stopped; with ``once``, one pass. Returns what made the last poll fail (None when it did not)."""
        state = self.installer.recover()
        current = state.current
        self._log(event="start", watch=str(self.watch or ""), source=self.poller.source if self.poller else "",
                  running=f"{current.name} {current.version}" if current else "nothing")
        ready = False
        while True:
            self.scan()
            failed = self.poll() if self.poller is not None else None
            notify("WATCHDOG=1" if ready else "READY=1")
            ready = True
            if once:
                return failed
            time.sleep(self.next_wait())

    def _still_alive(self, _: int) -> None:
        if time.monotonic() - self._fed > WATCHDOG_EVERY_S:
            notify("WATCHDOG=1")
            self._fed = time.monotonic()

    def next_wait(self) -> float:
        """Seconds to the next pass: the interval, doubled per failed poll in a row, with jitter."""
        factor = float(min(1 << min(self.failures, 30), self.MAX_BACKOFF))
        return self.interval * factor * random.uniform(0.8, 1.2)

    def poll(self) -> SealiftError | None:
        """One poll of the registry; what made it fail (and the wait longer), or None."""
        assert self.poller is not None
        try:
            outcome = self.poller.poll()
        except Exception as e:  # whatever the network or the registry did, the service goes on
            self.failures += 1
            failed = e if isinstance(e, SealiftError) else SealiftError(f"{type(e).__name__}: {e}")
            self._log(event="poll-failed", source=self.poller.source, fault=failed.fault, error=failed.diagnostics(),
                      retry_in=f"{self.next_wait():.0f}s")
            return failed
        self.failures = 0
        if outcome is None:
            self._log(event="up-to-date", source=self.poller.source)
        else:
            self._outcome(outcome)
        return None

    def scan(self) -> int:
        """Install every new bundle, overlay or medium found in the watched directory; return how many were tried.
        One refused for a reason the same bytes would meet again is not tried again by this process
        until its files change (a medium still being copied changes) or the device's release does."""
        tried = 0
        for path in self._candidates():
            try:
                tried += self._consider(path)
            except Exception as e:  # a damaged state or identity file, say: said once, and the service goes on
                failed = e if isinstance(e, SealiftError) else SealiftError(f"{type(e).__name__}: {e}")
                self._once(("fault", str(path), failed.diagnostics()), event=_event(failed), bundle=str(path), fault=failed.fault,
                           error=failed.diagnostics())
        return tried

    def _consider(self, path: Path) -> int:
        """Install what ``path`` offers, if it is new to this device; 1 if an install was tried."""
        state = self.installer.slots.load()
        site = self.installer.site()
        try:
            offered = offer(path, self.installer.profile, site)
        except SealiftError:
            return 0  # unreadable (perhaps still being copied), or nothing for this device
        current = state.current
        seen = (str(path), _fingerprint(path), failure_key(current) if current is not None else "")
        try:
            key = choose(state, offered, self.installer.running_overlay(state)).key(state)
        except SealiftError as e:  # it cannot work with what runs now
            self._once(seen, event=_event(e), bundle=str(path), fault=e.fault, error=e.diagnostics())
            return 0
        if key is None or (current is not None and key == failure_key(current)) or key in state.failed:
            return 0
        if (*seen, key) in self.refused:
            return 0
        self._log(event="install", bundle=str(path), digest=key)
        try:
            outcome = self.installer.install(path)
        except SealiftError as e:
            if isinstance(e, Refused):  # the same bytes would be refused again: not checked on every pass
                self.refused.add((*seen, key))
            self._log(event=_event(e), bundle=str(path), fault=e.fault, error=e.diagnostics())
            return 1
        self._outcome(outcome)
        return 1

    def _once(self, memo: tuple[str, ...], **fields: str) -> None:
        """Log ``fields`` the first time ``memo`` is seen."""
        if memo not in self.refused:
            self.refused.add(memo)
            self._log(**fields)

    def _outcome(self, outcome: Outcome) -> None:
        release = outcome.release
        self._log(event="committed" if outcome.committed else "rolled-back", release=f"{release.name} {release.version}",
                  overlay=release.overlay, reason=outcome.reason)

    def _candidates(self) -> list[Path]:
        if self.watch is None:
            return []
        try:
            entries = sorted(self.watch.iterdir())
        except OSError as e:
            self._log(event="watch-unreadable", watch=str(self.watch), error=e.strerror or str(e))
            return []
        return [p for p in entries if (p.is_dir() and (p / "index.json").is_file()) or (p.is_file() and p.suffix == ".tar")]

    def _log(self, **fields: str) -> None:
        self.log(" ".join(f"{key}={json.dumps(value)}" for key, value in fields.items()))


def _event(error: SealiftError) -> str:
    return "refused" if isinstance(error, Refused) else "install-failed"


def _fingerprint(path: Path) -> str:
    """Changes whenever a file under ``path`` (or the file itself) is added, removed, grown or rewritten."""
    entries = []
    try:
        if path.is_dir():
            for directory, _, names in os.walk(path):
                for name in names:
                    st = os.stat(os.path.join(directory, name), follow_symlinks=False)
                    entries.append(f"{os.path.relpath(os.path.join(directory, name), path)}:{st.st_size}:{st.st_mtime_ns}")
        else:
            st = path.stat()
            entries.append(f":{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        return ""
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()
