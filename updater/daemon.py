"""``sealift-updater run``: install what arrives, from removable media and from a site registry.

Each pass looks at the watched directory (:mod:`updater.watch`) and polls each site registry
repository it is given (one per application) for a newer signed release (:mod:`updater.poll`);
then it sleeps. It talks to
systemd when started as a ``Type=notify`` service: ``READY=1`` once it has converged and the loop
is up (before the first pass, which may download and install for minutes), ``STATUS=`` with what
it is doing (``systemctl status`` shows it), and ``WATCHDOG=1`` after each pass, at each step of
an install and while a download makes progress. Log lines are ``key=value`` pairs, easy to search
in journald.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from updater.errors import Deferred, SealiftError
from updater.gate import Gate
from updater.install import Installer, Outcome
from updater.lastseen import record_poll
from updater.poll import RegistryPoller
from updater.reports import Reports
from updater.watch import Watcher

__all__ = ["Daemon", "notify", "priority"]

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


_ERRORS = ("refused", "install-failed", "recover-failed", "rollback-failed")  # an artifact refused, a device that cannot converge
_WARNINGS = ("poll-failed", "rolled-back", "rollout-unreadable",
             "report-failed", "reports-not-written", "reports-not-pushed", "metrics-not-written",
             "watch-unreadable")


def priority(line: str) -> int:
    """The syslog priority of a log line, for journald: 3 (error) for refusals and what kept an
    application from installing or converging, 4 (warning) for an outage, a rollback and what kept
    reports or metrics from going out, 6 (info) for the rest."""
    event = line.split(" ", 1)[0].removeprefix('event="').removesuffix('"') if line.startswith('event="') else ""
    if event in _ERRORS:
        return 3
    if event in _WARNINGS or line.startswith("warning:"):
        return 4
    return 6


class Daemon:
    """Installs what arrives: bundles and media in ``watch``, and releases site registries offer.

    A pass scans ``watch`` and polls each of ``pollers``; passes are ``interval`` seconds apart, and
    after a failed poll the wait doubles (up to ``MAX_BACKOFF`` times the interval), each wait
    shifted at random so that a site's devices do not poll in step. Nothing a pass does to the
    network touches the running release.
    """

    MAX_BACKOFF = 16

    def __init__(self, installer: Installer, watch: Path | None, *, pollers: Sequence[RegistryPoller] = (),
                 interval: float = 30.0, reports: Reports | None = None, report_to: str | None = None,
                 plain_http: bool = False, metrics: Path | None = None, log: Callable[[str], None]) -> None:
        self.installer = installer
        self.reports = reports or Reports(installer)
        self.report_to = report_to  # REGISTRY/PREFIX of the site mirror's reports, if the device reaches one
        self.plain_http = plain_http
        self.metrics = metrics  # a node-exporter textfile to rewrite after each pass
        self.watch = watch
        self.pollers = tuple(pollers)
        self.interval = interval
        self.log = log
        self.failures = 0
        self.unconverged = False
        self.watcher = Watcher(installer, watch, say=self._log, reports=self.reports) if watch is not None else None
        self._report_fault = self._metrics_fault = self._recall_fault = ""
        self._said_waits: dict[str, str] = {}
        self._fed = time.monotonic()
        for poller in self.pollers:
            poller.advance = self._still_alive  # a long download is progress: systemd's watchdog must not kill it

    def run(self, *, once: bool = False) -> SealiftError | None:
        """Serve until stopped; with ``once``, one pass. Returns what made the last poll fail (None when it did not)."""
        said = self.installer.log
        self.installer.log = lambda line: self._installing(line, said)
        self.installer.alive = lambda: self._still_alive(0)  # long health checks are progress too
        self._converge()
        running = self._running()
        self._log(event="start", watch=str(self.watch or ""), source=" ".join(p.source for p in self.pollers),
                  running=running)
        notify(f"READY=1\nSTATUS=running {running}; looking for updates")
        while True:
            if self.unconverged:
                self._converge()  # the engine may answer again, the port may be free again
            self.scan()
            failed = self.poll()
            self.follow_rollouts()
            self.report()
            self.write_metrics()
            wait = self.next_wait()
            notify(f"WATCHDOG=1\nSTATUS=running {self._running()}; "
                   + (f"last poll failed ({failed.fault}), retrying" if failed else "next look") + f" in {wait:.0f}s")
            self._fed = time.monotonic()
            if once:
                return failed
            self._sleep(wait)

    def _running(self) -> str:
        """What runs, one ``NAME VERSION`` per application."""
        try:
            states = self.installer.apps.states()
        except SealiftError as e:
            return f"? ({e.fault}: the state cannot be read)"
        running = [f"{s.current.name} {s.current.version}" for s in states.values() if s.current is not None]
        return ", ".join(running) or "nothing"

    def _converge(self) -> None:
        """Converge every application (as ``recover``); a fault there is said, and the service goes on
        (what arrives next may be the fix) and tries again each pass until it converges."""
        try:
            converged = self.installer.recover()
        except SealiftError as unlisted:  # the applications cannot even be listed
            converged = {"": unlisted}
        failed = {name: e for name, e in converged.items() if isinstance(e, SealiftError)}
        for name, e in failed.items():
            self._log(event="recover-failed", app=name, fault=e.fault, error=e.diagnostics())
        self.unconverged = bool(failed)

    def _sleep(self, seconds: float) -> None:
        """Sleep between passes, feeding the watchdog: a wait stretched by failed polls may be longer than it."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, WATCHDOG_EVERY_S))
            self._still_alive(0)

    def _still_alive(self, _: int) -> None:
        if time.monotonic() - self._fed > WATCHDOG_EVERY_S:
            notify("WATCHDOG=1")
            self._fed = time.monotonic()

    def _installing(self, line: str, said: Callable[[str], None]) -> None:
        """An install's step, passed on to the log and to systemd's status line; a step is progress."""
        said(line)
        notify(f"WATCHDOG=1\nSTATUS={line.splitlines()[0][:200]}")
        self._fed = time.monotonic()

    def next_wait(self, failures: int | None = None) -> float:
        """Seconds to the next pass: the interval, doubled per failed poll in a row (``failures``,
        default: so far), with jitter."""
        failed = self.failures if failures is None else failures
        factor = float(min(1 << min(failed, 30), self.MAX_BACKOFF))
        return self.interval * factor * random.uniform(0.8, 1.2)

    def poll(self) -> SealiftError | None:
        """One poll of each registry repository; what made the first that failed fail (and the wait
        longer), or None."""
        failures = [f for f in (self._poll(poller) for poller in self.pollers) if f is not None]
        self.failures = self.failures + 1 if failures else 0
        return failures[0] if failures else None

    def _poll(self, poller: RegistryPoller) -> SealiftError | None:
        try:
            outcome = poller.poll()
        except Deferred as e:  # its rollout held it back at the last check: a wait, not a failure
            poller.held = None
            record_poll(self.installer.state_dir, poller.source, when=self.installer.journal.now())
            self._waits(poller.source, e)
            return None
        except Exception as e:  # whatever the network or the registry did, the service goes on
            # a fresh error of the same family: keeping the raised one would keep its frames (and what they hold) alive
            failed = type(e)(e.diagnostics()) if isinstance(e, SealiftError) else SealiftError(f"{type(e).__name__}: {e}")
            self._log(event="poll-failed", source=poller.source, fault=failed.fault, error=failed.diagnostics(),
                      retry_in=f"{self.next_wait(self.failures + 1):.0f}s")
            self.installer.journal.record("poll-failed", source=poller.source, fault=failed.fault, error=failed.diagnostics())
            record_poll(self.installer.state_dir, poller.source, when=self.installer.journal.now(), error=failed)
            return failed
        record_poll(self.installer.state_dir, poller.source, when=self.installer.journal.now())
        if outcome is None and poller.held is not None:
            self._waits(poller.source, poller.held[1])
        elif outcome is None:
            self._log(event="up-to-date", source=poller.source)
        else:
            self._outcome(outcome)
        return None

    def _waits(self, source: str, waits: Deferred) -> None:
        """Say a staged rollout holds a release back, once per source until the reason changes."""
        if self._said_waits.get(source) != waits.diagnostics():
            self._log(event="deferred", source=source, reason=waits.diagnostics())
        self._said_waits[source] = waits.diagnostics()

    def follow_rollouts(self) -> None:
        """Return each application whose running release a halted rollout recalls (:meth:`updater.gate.Gate.follow`)."""
        try:
            done = Gate(self.installer).follow()
        except SealiftError as e:
            if e.diagnostics() != self._recall_fault:
                self._log(event="rollout-unreadable", fault=e.fault, error=e.diagnostics())
            self._recall_fault = e.diagnostics()
            return
        failed = " | ".join(r.diagnostics() for r in done if isinstance(r, SealiftError))
        for result in done:
            if not isinstance(result, SealiftError):
                self._outcome(result)
            elif failed != self._recall_fault:  # tried again each pass, said once
                self._log(event="rollback-failed", fault=result.fault, error=result.diagnostics())
        self._recall_fault = failed

    def write_metrics(self) -> None:
        """Rewrite the metrics textfile (:mod:`updater.metrics`); a fault is said once, and the service goes on."""
        if self.metrics is None:
            return
        from updater.metrics import write_textfile

        try:
            write_textfile(self.installer.state_dir, self.metrics)
        except SealiftError as e:
            if e.diagnostics() != self._metrics_fault:
                self._log(event="metrics-not-written", fault=e.fault, error=e.diagnostics())
            self._metrics_fault = e.diagnostics()
            return
        self._metrics_fault = ""

    def report(self) -> None:
        """Make a report when one is due, on an enrolled device (:mod:`updater.reports`), and push those
        not pushed yet to the site mirror (``report_to``); a fault is said once, and the service goes on."""
        if not self.installer.identity.enrolled():
            return
        faults: list[tuple[str, SealiftError, dict[str, str]]] = []
        try:
            made = self.reports.make() if self.reports.due() else None
        except SealiftError as unmade:  # the kept reports still go up
            faults.append(("report-failed", unmade, {}))
        else:
            if made is not None:
                self._log(event="report", seq=str(int(made.stem)), bytes=str(made.stat().st_size))
        if self.report_to:
            try:
                pushed = self.reports.push(self.report_to, plain_http=self.plain_http)
            except SealiftError as unpushed:
                faults.append(("reports-not-pushed", unpushed, {"to": self.report_to}))
            else:
                if pushed:
                    self._log(event="reports-pushed", to=self.report_to, count=str(pushed))
        said = " | ".join(fault.diagnostics() for _, fault, _ in faults)
        if said != self._report_fault:  # each fault said once, until it changes or goes
            for event, fault, fields in faults:
                self._log(event=event, **fields, fault=fault.fault, error=fault.diagnostics())
        self._report_fault = said

    def scan(self) -> int:
        """One look at the watched directory (see :class:`updater.watch.Watcher`); how many installs were tried."""
        return self.watcher.scan() if self.watcher is not None else 0

    def _outcome(self, outcome: Outcome) -> None:
        release = outcome.release
        self._log(event="committed" if outcome.committed else "rolled-back", release=f"{release.name} {release.version}",
                  overlay=release.overlay, reason=outcome.reason)

    def _log(self, **fields: str) -> None:
        self.log(" ".join(f"{key}={json.dumps(value)}" for key, value in fields.items()))
