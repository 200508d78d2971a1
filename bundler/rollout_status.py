"""How a rollout goes, from the devices' reports (the fleet database, :mod:`bundler.fleet`).

Each device of the inventory that is not revoked falls in the wave the plan gives it (as the device
itself decides: :meth:`updater.rollout.Plan.wave_of`), and counts as one of:

- **failed**: it reported a rollback of the release (failed health checks, or an engine that would
  not start it);
- **updated**: its newest report says it runs the release;
- **waiting**: it reported since the rollout started, and does not run the release yet (its status
  says why: a wave not open, a window closed, a pause);
- **unheard**: no report since the rollout started.

A wave's failure rate is ``failed / (failed + updated)``: of the devices that tried the release,
the share that could not keep it; the first failure of a small canary counts in full.
:func:`failing` names the open wave whose rate passes the plan's threshold, which makes
``sealift rollout check`` halt the rollout and ``advance`` refuse to open the next wave.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from bundler.devices import Inventory
from updater.rollout import Plan

__all__ = ["WaveStatus", "failing", "rollout_status"]

_KINDS = ("updated", "failed", "waiting", "unheard")


@dataclass
class WaveStatus:
    """The devices of one wave, by what their reports say."""

    name: str
    open: bool
    devices: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in _KINDS})

    @property
    def failure_rate(self) -> float:
        tried = len(self.devices["failed"]) + len(self.devices["updated"])
        return 100.0 * len(self.devices["failed"]) / tried if tried else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "open": self.open, "failure_rate": round(self.failure_rate, 2),
                **{kind: len(found) for kind, found in self.devices.items()},
                "devices": {kind: sorted(found) for kind, found in self.devices.items()}}


def rollout_status(db: sqlite3.Connection, inventory: Inventory, plan: Plan) -> list[WaveStatus]:
    """Each wave of ``plan`` with its devices counted as the module says (devices in no wave are left out)."""
    waves = [WaveStatus(name=w.name, open=i < plan.opened) for i, w in enumerate(plan.waves)]
    since = plan.begun.isoformat()
    failed = {row[0] for row in db.execute(
        """SELECT DISTINCT r.device FROM events e JOIN reports r ON r.id = e.report
           WHERE e.kind = 'rolled-back' AND e.app = ? AND e.version = ?""", (plan.app, plan.version))}
    runs = {device: version for device, version in db.execute(
        """SELECT s.device, s.version FROM samples s JOIN devices d ON d.device = s.device AND d.seq = s.seq
           WHERE s.app = ?""", (plan.app,))}
    heard = {device: created for device, created in db.execute("SELECT device, created FROM devices")}
    for device in inventory.devices():
        if device.revoked is not None:
            continue
        index = plan.wave_of(device.device, device.site)
        if index is None:
            continue
        if device.device in failed:
            kind = "failed"
        elif runs.get(device.device) == plan.version:
            kind = "updated"
        elif device.device in heard and _after(heard[device.device], since):
            kind = "waiting"
        else:
            kind = "unheard"
        waves[index].devices[kind].append(device.device)
    return waves


def failing(waves: list[WaveStatus], plan: Plan) -> str | None:
    """Why the rollout must stop: the first open wave whose failure rate passes the plan's threshold (None: none does)."""
    for wave in waves:
        if wave.open and wave.devices["failed"] and wave.failure_rate > plan.failure_threshold:
            return (f"wave {wave.name}: {len(wave.devices['failed'])} of {len(wave.devices['failed']) + len(wave.devices['updated'])} "
                    f"devices that tried {plan.app} {plan.version} failed ({wave.failure_rate:.0f}%, threshold "
                    f"{plan.failure_threshold:g}%)")
    return None


def _after(created: str, since: str) -> bool:
    """Whether a report made at ``created`` (the device's ISO 8601 time) is newer than ``since``."""
    try:
        return dt.datetime.fromisoformat(created) >= dt.datetime.fromisoformat(since)
    except ValueError:
        return False
