"""Removable media: a directory where media are mounted (or bundles copied), and what is new in it.

Once a scan's installs are done, every medium in the directory (and any folder holding a
``sealift-reports`` folder) is given the device's signed reports it lacks (:mod:`updater.reports`).

Each scan looks for bundles, overlays and media (OCI layout directories and tar files) and
installs, one at a time, what this device has not installed or seen fail, of every application
on it that the device runs (all of them, unless the device names its applications). One refused for a reason
the same bytes would meet again (a Refused: failed verification, damaged or incomplete content,
secrets sealed to other devices) is said once and not tried again by this process until its files
change (a medium still being copied changes), or the device's release does; a fault of the
device, the engine or a delivery is tried again on the next scan.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from updater.artifact import open_artifact
from updater.errors import Deferred, Refused, SealiftError
from updater.install import Installer, Outcome
from updater.plan import Offer, failure_key, offered_apps, plan, read_offer
from updater.reports import REPORTS_FOLDER, Reports
from updater.verify import take_metadata

__all__ = ["Watcher"]

RECHECK_DEFERRED_S = 300.0  # a release its rollout holds back is looked at again after this long, not every scan


class Watcher:
    """Installs what arrives in ``watch``; ``say`` takes the fields of one log line."""

    def __init__(self, installer: Installer, watch: Path, *, say: Callable[..., None], reports: Reports | None = None) -> None:
        self.installer = installer
        self.watch = watch
        self.reports = reports
        self._log = say
        self.reported: set[tuple[str, str]] = set()  # (medium, its fingerprint) given a fresh report
        self.refused: set[tuple[str, ...]] = set()  # (path, its files, the running release[, what it offered]) refused
        self.deferred: dict[tuple[str, ...], tuple[float, str]] = {}  # what its rollout holds back: (next look, why)

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
        if self.reports is not None and self.installer.identity.enrolled():
            self._report(self.reports)
        return tried

    def _report(self, reports: Reports) -> None:
        """Give each medium this device's reports it lacks, with a fresh one first when a medium arrived;
        once the installs are done, so an install never waits on it. A fault is said once per medium."""
        media = {medium: (str(medium), _fingerprint(medium)) for medium in self._report_media()}
        if any(seen not in self.reported for seen in media.values()):
            self.reported.update(media.values())
            try:
                reports.make()
            except SealiftError as e:
                self._once(("report", e.diagnostics()), event="report-failed", fault=e.fault, error=e.diagnostics())
        for medium in media:
            try:
                copied = reports.to_medium(medium)
            except SealiftError as e:
                self._once(("reports", str(medium), e.diagnostics()), event="reports-not-written", medium=str(medium),
                           fault=e.fault, error=e.diagnostics())
                continue
            if copied:
                self._log(event="reports-written", medium=str(medium), count=str(copied))

    def _report_media(self) -> list[Path]:
        """The media to write reports to: every directory in the watched one holding a medium or a
        bundle, or a folder for reports alone (a tar file takes none)."""
        try:
            entries = sorted(self.watch.iterdir())
        except OSError:
            return []
        return [p for p in entries if p.is_dir() and not p.is_symlink()
                and ((p / "index.json").is_file() or (p / REPORTS_FOLDER).is_dir())]

    def _consider(self, path: Path) -> int:
        """Install what ``path`` offers of each application this device runs, if it is new to this
        device; how many installs were tried."""
        site = self.installer.site()
        try:
            with open_artifact(path) as artifact:
                names = offered_apps(artifact, self.installer.profile, site)
                offers = {name: read_offer(artifact, self.installer.profile, site, app=name) for name in names}
        except SealiftError:
            return 0  # unreadable (perhaps still being copied), or nothing for this device
        fingerprint = _fingerprint(path)
        self._take_metadata(path, fingerprint)
        tried = 0
        for name, offered in offers.items():
            if self.installer.declared and name not in self.installer.declared:
                self._once((str(path), fingerprint, name), event="skipped", bundle=str(path), app=name,
                           reason="not an application this device runs")
                continue
            tried += self._consider_app(path, fingerprint, name, offered)
        return tried

    def _consider_app(self, path: Path, fingerprint: str, name: str, offered: Offer) -> int:
        """Install what ``path`` offers of application ``name`` if it is new; 1 if an install was tried."""
        app = self.installer.app(name)
        state = app.slots.load()
        current = state.current
        seen = (str(path), fingerprint, name, failure_key(current) if current is not None else "")
        try:
            key = plan(state, offered, app.running_overlay(state)).key(state)
        except SealiftError as e:  # it cannot work with what runs now
            self._once(seen, event=_event(e), bundle=str(path), app=name, fault=e.fault, error=e.diagnostics())
            return 0
        if key is None or (current is not None and key == failure_key(current)) or key in state.failed:
            return 0
        if (*seen, key) in self.refused:
            return 0
        waiting = self.deferred.get((*seen, key))
        if waiting is not None and time.monotonic() < waiting[0]:
            return 0
        if waiting is None:
            self._log(event="install", bundle=str(path), app=name, digest=key)
        try:
            outcome = self.installer.install(path, app=name)
        except Deferred as e:  # its rollout holds it back: looked at again later, said again only when the reason changes
            if waiting is None or waiting[1] != e.diagnostics():
                self._log(event="deferred", bundle=str(path), app=name, reason=e.diagnostics())
            self.deferred[(*seen, key)] = (time.monotonic() + RECHECK_DEFERRED_S, e.diagnostics())
            return 1
        except SealiftError as e:
            if isinstance(e, Refused):  # the same bytes would be refused again: not checked on every pass
                self.refused.add((*seen, key))
            self._log(event=_event(e), bundle=str(path), app=name, fault=e.fault, error=e.diagnostics())
            return 1
        self._outcome(outcome)
        return 1

    def _take_metadata(self, path: Path, fingerprint: str) -> None:
        """Keep what is newer in the signed metadata of a medium not seen before, even when it brings nothing
        to install: a rollout halted, for a release this device runs (the service then acts on it)."""
        memo = (str(path), fingerprint, "metadata")
        if memo in self.refused or not self.installer.trust.provisioned():  # not provisioned: an install says so
            return
        try:
            with open_artifact(path) as artifact:
                take_metadata(artifact.reader, trust=self.installer.trust)
        except SealiftError as e:  # tried again next scan (a clock set right, a disk freed), said once
            self._once((*memo, e.diagnostics()), event=_event(e), bundle=str(path), fault=e.fault, error=e.diagnostics())
            return
        self.refused.add(memo)  # taken: not verified again until the medium changes

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
        try:
            entries = sorted(self.watch.iterdir())
        except OSError as e:
            self._log(event="watch-unreadable", watch=str(self.watch), error=e.strerror or str(e))
            return []
        return [p for p in entries if (p.is_dir() and (p / "index.json").is_file()) or (p.is_file() and p.suffix == ".tar")]


def _event(error: SealiftError) -> str:
    return "refused" if isinstance(error, Refused) else "install-failed"


def _fingerprint(path: Path) -> str:
    """Changes whenever a file under ``path`` (or the file itself) is added, removed, grown or rewritten."""
    entries = []
    try:
        if path.is_dir():
            for directory, folders, names in os.walk(path):
                if directory == str(path) and REPORTS_FOLDER in folders:
                    folders.remove(REPORTS_FOLDER)  # what this device writes there is not news to it
                for name in names:
                    st = os.stat(os.path.join(directory, name), follow_symlinks=False)
                    entries.append(f"{os.path.relpath(os.path.join(directory, name), path)}:{st.st_size}:{st.st_mtime_ns}")
        else:
            st = path.stat()
            entries.append(f":{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        return ""
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()
