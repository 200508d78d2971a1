"""Staged rollout: the signed plan that says which devices may install a release, and when.

A release manager signs, as the delegated role ``rollout``, one plan per release: the target
``NAME/rollout/VERSION``, whose ``custom`` field holds the plan and whose hashes are those of the
plan's canonical JSON. The plan travels with the rest of the TUF metadata (registries, mirrors,
media) and a device decides from it alone, offline (:func:`decide`):

1. the rollout is neither paused nor halted;
2. the device belongs to a wave: the first wave that names its ID or its site, or else the first
   whose percentage covers its bucket (a stable number from its ID and the release, so a device
   stays in its wave); percentages are cumulative shares of the devices no wave names;
3. its wave is open (the release manager opens waves one by one) and its earliest start has passed
   by a clock that never runs early: a device clock behind what the device already trusted, or
   behind the plan's own signing time, is replaced by that time;
4. its site's maintenance window is open (:mod:`updater.windows`), unless the operator at the
   device overrides the window.

A halted plan with ``rollback`` also tells the devices that already run the release to return to
the previous one. A release with no plan is not staged: every device may install it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import zoneinfo
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from updater.errors import SealiftError
from updater.names import NAME
from updater.oci import canonical_json
from updater.versions import VERSION
from updater.windows import Maintenance

__all__ = ["PLAN_PATHS", "ROLE", "Decision", "Plan", "State", "Wave", "bucket", "decide", "is_reason", "plan_target"]

ROLE = "rollout"
PLAN_PATHS = ("*/rollout/*",)  # NAME/rollout/VERSION: nothing else has "rollout" as its second part
MAX_WAVES = 64
MAX_NAMED = 100_000  # devices and sites one plan may name
BUCKETS = 10_000  # a bucket per hundredth of a percent
YEARS = (2000, 2200)  # the times a plan may name


class State(Enum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"


def plan_target(app: str, version: str) -> str:
    """The target a release's plan is signed as."""
    return f"{app}/rollout/{version}"


def is_reason(text: Any) -> bool:
    """Whether ``text`` may be a plan's reason: one line of printable text, at most 200 characters (devices
    show it in their status, log and reports)."""
    return isinstance(text, str) and len(text) <= 200 and text.isprintable()


def bucket(app: str, version: str, device: str) -> int:
    """The device's place, 0 to 9999, in the rollout of ``app`` ``version``: the same for every poll."""
    digest = hashlib.sha256(f"{app}\0{version}\0{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True, kw_only=True)
class Wave:
    """One wave: the devices and sites it names, the share of the other devices it takes (``upto``, in
    hundredths of a percent, cumulative over the waves), and its earliest start."""

    name: str
    devices: frozenset[str] = frozenset()
    sites: frozenset[str] = frozenset()
    upto: int | None = None
    not_before: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.devices:
            data["devices"] = sorted(self.devices)
        if self.sites:
            data["sites"] = sorted(self.sites)
        if self.upto is not None:
            data["upto_bp"] = self.upto  # basis points (hundredths of a percent): TUF's canonical JSON has no fractions
        if self.not_before is not None:
            data["not_before"] = _time_text(self.not_before)
        return data


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The rollout of ``app`` ``version``: its waves, how many are open, its state and what it stops at."""

    app: str
    version: str
    waves: tuple[Wave, ...]
    opened: int = 1
    state: State = State.RUNNING
    failure_threshold: float = 0.0  # a wave whose share of failed devices passes it halts the rollout (`rollout check`)
    rollback: bool = False  # halted: devices that run the release go back to the previous one
    reason: str = ""  # why it was paused or halted
    changed: dt.datetime  # when it was last signed: a lower bound of the time for every device that reads it
    started: dt.datetime | None = None  # when it was first signed (default: ``changed``)
    windows: dict[str, Maintenance] = field(default_factory=dict)  # by site

    def to_json(self) -> dict[str, Any]:
        return {"app": self.app, "version": self.version, "state": self.state.value, "opened": self.opened,
                "failure_threshold_bp": round(self.failure_threshold * 100), "rollback": self.rollback, "reason": self.reason,
                "changed": _time_text(self.changed), "started": _time_text(self.begun), "waves": [w.to_json() for w in self.waves],
                "windows": {site: w.to_json() for site, w in sorted(self.windows.items())}}

    def __post_init__(self) -> None:
        if self.started is None:  # a new plan starts when it is first signed
            object.__setattr__(self, "started", self.changed)

    @property
    def begun(self) -> dt.datetime:
        """When the rollout was first signed."""
        return self.started or self.changed

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    def changed_to(self, now: dt.datetime, **changes: Any) -> Plan:
        """This plan with ``changes``, signed at ``now`` (the signer's clock: devices take it as a time that has
        passed, so it is never carried forward from an earlier step)."""
        return replace(self, **changes, started=self.begun, changed=now.replace(microsecond=0))

    def wave_of(self, device: str | None, site: str | None) -> int | None:
        """The index of the wave ``device`` at ``site`` belongs to; None when it is in none. A device
        not enrolled (no ID, so no bucket) belongs to the last wave if that one reaches every device
        (100 %), and to none otherwise."""
        if device is None:
            return len(self.waves) - 1 if self.waves[-1].upto == BUCKETS else None
        for i, wave in enumerate(self.waves):
            if device in wave.devices or (site is not None and site in wave.sites):
                return i
        place = bucket(self.app, self.version, device)
        return next((i for i, wave in enumerate(self.waves) if wave.upto is not None and place < wave.upto), None)

    @classmethod
    def from_json(cls, data: Any, error: type[SealiftError], where: str, *, zones: bool = True) -> Plan:
        """Read and check a plan; ``error`` (Refused on a device, InputError at the office) names what is wrong.
        Without ``zones``, the sites' time zones are checked only as names: a device resolves its own site's
        when it decides (its tzdata may lack a zone another site uses)."""
        return _PlanReader(error, where, zones=zones).plan(data)

    def check(self, error: type[SealiftError], where: str) -> None:
        """What a plan must be: waves neither empty nor overlapping, percentages rising to at most 100."""
        if not 1 <= len(self.waves) <= MAX_WAVES:
            raise error(f"{where}: expected 1 to {MAX_WAVES} waves, found {len(self.waves)}")
        if not 0 <= self.opened <= len(self.waves):
            raise error(f"{where}: {self.opened} waves open, of {len(self.waves)}")
        if not 0 <= self.failure_threshold <= 100:
            raise error(f"{where}: failure threshold {self.failure_threshold}% is not a percentage (0 to 100)")
        seen: dict[str, str] = {}
        names: set[str] = set()
        upto = 0
        for wave in self.waves:
            if wave.name in names:
                raise error(f"{where}: two waves are called {wave.name}")
            names.add(wave.name)
            if not wave.devices and not wave.sites and wave.upto is None:
                raise error(f"{where}: wave {wave.name} is empty (it names no device or site, and no percentage)")
            for what in [*(f"device {d}" for d in wave.devices), *(f"site {s}" for s in wave.sites)]:
                if what in seen:
                    raise error(f"{where}: waves {seen[what]} and {wave.name} overlap: both name {what}")
                seen[what] = wave.name
            if wave.upto is not None:
                if not 0 < wave.upto <= BUCKETS:
                    raise error(f"{where}: wave {wave.name}: {wave.upto / 100}% is not a share of devices (above 0, at most 100)")
                if wave.upto <= upto:
                    raise error(f"{where}: wave {wave.name}: {wave.upto / 100}% takes no device (percentages are "
                                f"cumulative: an earlier wave reaches {upto / 100}% already)")
                upto = wave.upto
        if len(seen) > MAX_NAMED:
            raise error(f"{where}: names {len(seen)} devices and sites, more than the {MAX_NAMED} a plan may")


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What a plan says to one device: whether it may install now, and if not, why and until when."""

    install: bool
    reason: str = ""
    wave: str | None = None
    until: dt.datetime | None = None  # when the wait may end by itself (a wave's start, a window opening)


def decide(plan: Plan, *, device: str | None, site: str | None, now: dt.datetime, trusted_time: dt.datetime | None,
           ignore_window: bool = False) -> Decision:
    """Whether ``device`` (enrolled at ``site``) may install the plan's release at ``now`` (its clock);
    ``trusted_time``: the newest time the device already trusted. See the module's steps."""
    release = f"{plan.app} {plan.version}"
    if plan.state is State.HALTED:  # (1)
        return Decision(install=False, reason=f"the rollout of {release} is halted" + _because(plan.reason))
    if plan.state is State.PAUSED:
        return Decision(install=False, reason=f"the rollout of {release} is paused" + _because(plan.reason))
    index = plan.wave_of(device, site)  # (2)
    if index is None:
        return Decision(install=False, reason=f"this device is in no wave of the rollout of {release}")
    wave = plan.waves[index]
    if index >= plan.opened:  # (3)
        return Decision(install=False, wave=wave.name, reason=f"wave {wave.name} ({index + 1} of {len(plan.waves)}) of the "
                        f"rollout of {release} has not started ({plan.opened} open)")
    floor = max(plan.changed, trusted_time or plan.changed)
    clock = now if now >= floor else floor  # a clock behind what is known to have passed never starts a wave early
    if wave.not_before is not None and clock < wave.not_before:
        return Decision(install=False, wave=wave.name, until=wave.not_before,
                        reason=f"wave {wave.name} of the rollout of {release} starts at {_time_text(wave.not_before)}")
    window = plan.windows.get(site or "")
    if window is None or ignore_window:  # (4)
        return Decision(install=True, wave=wave.name)
    if now < floor:  # a stand-in time is a bound, not the time of day: the window cannot be told
        return Decision(install=False, wave=wave.name, reason=f"this device's clock reads {_time_text(now)}, before "
                        f"{_time_text(floor)}, a time already passed: site {site}'s maintenance window cannot be told; set the clock")
    try:
        opened = window.is_open(now)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return Decision(install=False, wave=wave.name, reason=f"site {site}'s maintenance window is in time zone "
                        f"{window.timezone}, which this device does not know (update its tzdata)")
    if not opened:
        opens = window.opens(now)
        return Decision(install=False, wave=wave.name, until=opens,
                        reason=f"outside site {site}'s maintenance window {window}" + (
                            f"; it opens at {_time_text(opens)}" if opens else ""))
    return Decision(install=True, wave=wave.name)


def _because(reason: str) -> str:
    return f": {reason}" if reason else ""


def _time_text(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _PlanReader:
    """Reads a plan's JSON strictly: every field typed and bounded, nothing unknown."""

    _FIELDS = frozenset({"app", "version", "state", "opened", "failure_threshold_bp", "rollback", "reason", "changed", "started", "waves",
                         "windows"})
    _WAVE = frozenset({"name", "devices", "sites", "upto_bp", "not_before"})

    def __init__(self, error: type[SealiftError], where: str, *, zones: bool) -> None:
        self.error = error
        self.where = where
        self.zones = zones

    def plan(self, data: Any) -> Plan:
        if not isinstance(data, dict) or set(data) != self._FIELDS:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise self.error(f"{self.where}: not a rollout plan (expected the fields {sorted(self._FIELDS)}, found {found})")
        app, version = self._text(data, "app", NAME), self._text(data, "version", VERSION)
        windows = data["windows"]
        if not isinstance(windows, dict) or not all(isinstance(k, str) and NAME.fullmatch(k) for k in windows):
            raise self.error(f"{self.where}: windows: expected maintenance windows by site name")
        threshold = self._basis_points(data["failure_threshold_bp"], "failure_threshold_bp")
        waves = data["waves"]
        if not isinstance(waves, list) or len(waves) > MAX_WAVES:
            raise self.error(f"{self.where}: waves: expected a list of at most {MAX_WAVES} waves")
        try:
            state = State(data["state"])
        except ValueError:
            raise self.error(f"{self.where}: state: expected one of {', '.join(s.value for s in State)}") from None
        opened, rollback, reason = data["opened"], data["rollback"], data["reason"]
        if isinstance(opened, bool) or not isinstance(opened, int) or not isinstance(rollback, bool) or not is_reason(reason):
            raise self.error(f"{self.where}: opened, rollback or reason: expected a number, a boolean and a line of text")
        plan = Plan(app=app, version=version, waves=tuple(self.wave(w, i) for i, w in enumerate(waves)), opened=opened,
                    state=state, failure_threshold=threshold / 100, rollback=rollback, reason=reason,
                    changed=self.time(data["changed"], "changed"), started=self.time(data["started"], "started"),
                    windows={site: Maintenance.from_json(w, self.error, f"{self.where}: windows: {site}", zone_known=self.zones)
                             for site, w in windows.items()})
        plan.check(self.error, self.where)
        return plan

    def wave(self, data: Any, index: int) -> Wave:
        where = f"wave {index + 1}"
        if not isinstance(data, dict) or not set(data) <= self._WAVE or "name" not in data:
            raise self.error(f"{self.where}: {where}: expected a name and any of devices, sites, upto_bp, not_before")
        name = self._text(data, "name", NAME)
        upto = self._basis_points(data["upto_bp"], f"wave {name}: upto_bp") if "upto_bp" in data else None
        return Wave(name=name, devices=self._names(data.get("devices", []), f"wave {name}: devices"),
                    sites=self._names(data.get("sites", []), f"wave {name}: sites"),
                    upto=upto,
                    not_before=self.time(data["not_before"], f"wave {name}: not_before") if "not_before" in data else None)

    def time(self, text: Any, what: str) -> dt.datetime:
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if isinstance(text, str) and len(text) < 40 else None
            when = when.astimezone(dt.UTC) if when is not None and when.tzinfo is not None else None
        except (ValueError, OverflowError):
            when = None
        if when is None or not YEARS[0] <= when.year <= YEARS[1]:
            raise self.error(f"{self.where}: {what}: expected a UTC time from {YEARS[0]} to {YEARS[1]} such as "
                             f"2026-12-01T06:00:00Z, found {str(text)[:40]!r}")
        return when

    def _basis_points(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= BUCKETS:
            raise self.error(f"{self.where}: {what}: expected a whole number of basis points from 0 to {BUCKETS}")
        return value

    def _names(self, items: Any, what: str) -> frozenset[str]:
        if not isinstance(items, list) or len(items) > MAX_NAMED or not all(isinstance(i, str) and NAME.fullmatch(i) for i in items):
            raise self.error(f"{self.where}: {what}: expected a list of names")
        if len(set(items)) != len(items):
            raise self.error(f"{self.where}: {what}: a name is listed twice")
        return frozenset(items)

    def _text(self, data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
        value = data[key]
        if not isinstance(value, str) or len(value) > 128 or not pattern.fullmatch(value):
            raise self.error(f"{self.where}: {key}: {str(value)[:80]!r} is not a valid {key}")
        return value
