"""``sealift-updater run``: watch a directory (where removable media mount) and install what arrives.

Each pass looks for bundles (OCI layout directories and tar files) in the watched directory and
installs, one at a time, those this device has not installed or seen fail; then it sleeps. It
talks to systemd when started as a ``Type=notify`` service: ``READY=1`` after the first pass,
``WATCHDOG=1`` after each one. Log lines are ``key=value`` pairs, easy to search in journald.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from bundler.errors import SealiftError
from updater.install import Installer

__all__ = ["Daemon", "notify"]


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
    """Installs bundles that appear in ``watch``, one pass every ``interval`` seconds."""

    def __init__(self, installer: Installer, watch: Path, *, interval: float = 30.0, log: Callable[[str], None]) -> None:
        self.installer = installer
        self.watch = watch
        self.interval = interval
        self.log = log

    def run(self, *, once: bool = False) -> None:
        state = self.installer.recover()
        current = state.current
        self._log(event="start", watch=str(self.watch), running=f"{current.name} {current.version}" if current else "nothing")
        ready = False
        while True:
            self.scan()
            notify("WATCHDOG=1" if ready else "READY=1")
            ready = True
            if once:
                return
            time.sleep(self.interval)

    def scan(self) -> int:
        """Install every new bundle found; return how many were tried."""
        tried = 0
        for bundle in self._candidates():
            state = self.installer.slots.load()
            seen = {r.digest for r in (state.current,) if r is not None} | set(state.failed)
            digest = _index_digest(bundle)
            if digest is None or digest in seen:
                continue
            tried += 1
            self._log(event="install", bundle=str(bundle), digest=digest)
            try:
                outcome = self.installer.install(bundle)
            except SealiftError as e:
                self._log(event="refused", bundle=str(bundle), error=e.diagnostics())
                continue
            self._log(event="committed" if outcome.committed else "rolled-back", release=f"{outcome.release.name} "
                      f"{outcome.release.version}", reason=outcome.reason)
        return tried

    def _candidates(self) -> list[Path]:
        try:
            entries = sorted(self.watch.iterdir())
        except OSError as e:
            self._log(event="watch-unreadable", watch=str(self.watch), error=e.strerror or str(e))
            return []
        return [p for p in entries if (p.is_dir() and (p / "index.json").is_file()) or (p.is_file() and p.suffix == ".tar")]

    def _log(self, **fields: str) -> None:
        self.log(" ".join(f"{key}={json.dumps(value)}" for key, value in fields.items()))


def _index_digest(bundle: Path) -> str | None:
    """The digest the bundle's index.json names (what identifies it), or None if unreadable."""
    from bundler.layout import open_layout

    try:
        with open_layout(bundle) as reader:
            return str(json.loads(reader.read_small("index.json"))["manifests"][0]["digest"])
    except (SealiftError, ValueError, KeyError, IndexError, TypeError):
        return None
