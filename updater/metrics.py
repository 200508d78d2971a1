"""The updater's state for Prometheus: a node-exporter textfile, or a loopback HTTP endpoint.

:class:`StateCollector` reads the state directory at each collection (nothing is cached, so a
scrape and ``status`` never disagree) and exposes, through the maintained client library:

- ``sealift_release_info{app,version,overlay,slot}`` (1 for each committed release) and
  ``sealift_phase{app,phase}`` (1 for the application's phase, 0 for the others);
- ``sealift_rollbacks{app}``: the rollbacks the application's recorded history holds;
- ``sealift_health_check_ok{app,version,check,type}`` and ``sealift_health_check_seconds{…}`` (how
  long after the checks began it passed or failed) of the application's last install or rollback;
- ``sealift_last_poll_timestamp_seconds{source}`` and ``sealift_last_poll_ok{source}``;
- ``sealift_metadata_expiry_seconds{role}``: seconds until each trusted role's metadata expires
  (negative once it has);
- ``sealift_reports_waiting``: signed reports not pushed yet (when the device pushes them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from updater.apps import Apps
from updater.errors import DeviceFault, SealiftError
from updater.lastseen import last_health, last_polls
from updater.reports import kept_reports, pushed_through
from updater.slots import Phase
from updater.trust import TrustedState

__all__ = ["StateCollector", "serve", "write_textfile"]


class StateCollector(Collector):
    """Collects from the state directory ``state_dir`` at each scrape."""

    def __init__(self, state_dir: Path, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self.state_dir = state_dir
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    def collect(self) -> Iterator[Any]:
        release = InfoMetricFamily("sealift_release", "The committed release of each application",
                                   labels=["app", "version", "overlay", "slot"])
        phase = GaugeMetricFamily("sealift_phase", "The application's phase (1 for the one it is in)", labels=["app", "phase"])
        rollbacks = GaugeMetricFamily("sealift_rollbacks", "Rollbacks in the application's recorded history", labels=["app"])
        check_ok = GaugeMetricFamily("sealift_health_check_ok", "Whether each check of the last install or rollback passed",
                                     labels=["app", "version", "check", "type"])
        check_s = GaugeMetricFamily("sealift_health_check_seconds", "When each check of the last install or rollback passed "
                                    "or failed, in seconds after the checks began", labels=["app", "version", "check", "type"])
        try:
            states = Apps(self.state_dir).states()
        except SealiftError:
            states = {}
        for name, state in states.items():
            if state.current is not None:
                release.add_metric([name, state.current.version, state.current.overlay or "", state.current.slot], {})
            for each in Phase:
                phase.add_metric([name, each.value], 1.0 if state.phase == each else 0.0)
            rollbacks.add_metric([name], float(sum(1 for e in state.history if e.get("phase") == Phase.ROLLED_BACK.value)))
            health = last_health(self.state_dir, name)
            for check in health.get("checks", ()):
                labels = [name, str(health.get("version", "")), str(check.get("check", "")), str(check.get("type", ""))]
                check_ok.add_metric(labels, 1.0 if check.get("ok") else 0.0)
                check_s.add_metric(labels, float(check.get("after") or 0.0))
        yield from (release, phase, rollbacks, check_ok, check_s)
        polled = GaugeMetricFamily("sealift_last_poll_timestamp_seconds", "When each source was last polled", labels=["source"])
        poll_ok = GaugeMetricFamily("sealift_last_poll_ok", "Whether the last poll of each source succeeded", labels=["source"])
        for source, poll in last_polls(self.state_dir).items():
            with contextlib.suppress(KeyError, ValueError, TypeError):
                polled.add_metric([source], dt.datetime.fromisoformat(poll["time"]).timestamp())
                poll_ok.add_metric([source], 1.0 if poll.get("ok") else 0.0)
        yield from (polled, poll_ok)
        expiry = GaugeMetricFamily("sealift_metadata_expiry_seconds", "Seconds until the trusted metadata of each role expires",
                                   labels=["role"])
        for role, expires in TrustedState(self.state_dir).expiries().items():
            with contextlib.suppress(ValueError):
                expiry.add_metric([role], (dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) - self.now()).total_seconds())
        yield expiry
        waiting = GaugeMetricFamily("sealift_reports_waiting", "Signed reports kept and not pushed yet")
        folder = self.state_dir / "reports"
        waiting.add_metric([], float(sum(1 for p in kept_reports(folder) if int(p.stem) > pushed_through(folder))))
        yield waiting


def write_textfile(state_dir: Path, path: Path) -> None:
    """Write the metrics for node-exporter's textfile collector (atomically: it never reads half a file)."""
    registry = CollectorRegistry()
    registry.register(StateCollector(state_dir))
    try:
        write_to_textfile(str(path), registry)
    except OSError as e:
        raise DeviceFault(f"{path}: cannot write the metrics ({e.strerror})") from e


def serve(state_dir: Path, port: int, *, address: str = "127.0.0.1") -> None:
    """Serve the metrics on ``http://ADDRESS:PORT/metrics`` from a background thread (loopback by default)."""
    registry = CollectorRegistry()
    registry.register(StateCollector(state_dir))
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as e:
        raise DeviceFault(f"{address}:{port}: cannot serve the metrics ({e.strerror})") from e
