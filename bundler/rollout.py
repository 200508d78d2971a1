"""``sealift rollout``: staged rollouts, planned and steered at the office, decided on each device.

A plan file names a release and its waves; :func:`read_plan_file` resolves it against the fleet
inventory (labels become device IDs, every named device and site must be known) and takes the
sites' maintenance windows from the inventory, so the signed plan (:mod:`updater.rollout`) holds
all a device needs to decide offline. :class:`Rollouts` then signs each step: the plan, a wave
opened, a pause, a resume, a halt. Every step is a new version of the rollout role's metadata, so
a device never goes back to an older plan (TUF's rollback protection).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from bundler.devices import Device, Inventory
from bundler.repo import Repository
from updater.errors import Conflict, InputError
from updater.names import NAME, closest
from updater.registry import connect
from updater.rollout import MAX_WAVES, YEARS, Plan, State, Wave, is_reason
from updater.versions import VERSION
from updater.yamlfile import Field, load_yaml

__all__ = ["Rollouts", "read_plan_file"]

_LABEL_SELECTOR = "labels"


def read_plan_file(path: Path, inventory: Inventory, *, now: dt.datetime) -> Plan:
    """The plan ``path`` describes, its labels resolved to devices and its sites' windows attached;
    InputError naming the first thing wrong (an empty or overlapping wave, an unknown device or site)."""
    top = load_yaml(path, what="rollout plan")
    f = top.mapping(required=("app", "version", "waves"), optional=("failure_threshold",))
    devices = [d for d in inventory.devices() if d.revoked is None]
    waves = tuple(_wave(entry, devices) for entry in f["waves"].items())
    if not 1 <= len(waves) <= MAX_WAVES:
        raise f["waves"].error(f"expected 1 to {MAX_WAVES} waves")
    windows = inventory.sites()
    plan = Plan(app=f["app"].string(pattern=NAME, what="an application name"),
                version=f["version"].string(pattern=VERSION, what="a semantic version"), waves=waves,
                failure_threshold=_percent(f["failure_threshold"]) if "failure_threshold" in f else 0.0,
                changed=now.replace(microsecond=0),
                windows={site: m for site, m in windows.items() if any(d.site == site for d in devices)})
    plan.check(InputError, str(path))
    _check_sites_apart(plan, devices, path)
    return plan


def _wave(entry: Field, devices: list[Device]) -> Wave:
    f = entry.mapping(required=("name",), optional=("devices", "sites", _LABEL_SELECTOR, "percent", "not_before"))
    name = f["name"].string(pattern=NAME, what="a wave name (lower case letters, digits, . _ -)")
    known = {d.device for d in devices}
    named = set(f["devices"].string_list(pattern=NAME, what="a device ID")) if "devices" in f else set()
    if strangers := sorted(named - known):
        raise f["devices"].error(f"{strangers[0]} is not an enrolled device in the inventory")
    if _LABEL_SELECTOR in f:
        wanted = {k: v.scalar_string() for k, v in f[_LABEL_SELECTOR].entries(key_pattern=NAME, key_what="label")}
        matched = {d.device for d in devices if all(d.labels.get(k) == v for k, v in wanted.items())}
        if not matched:
            shown = ", ".join(f"{k}={v}" for k, v in wanted.items())
            raise f[_LABEL_SELECTOR].error(f"{shown} matches no enrolled device in the inventory")
        named |= matched
    sites = set(f["sites"].string_list(pattern=NAME, what="a site name")) if "sites" in f else set()
    if unknown_sites := sorted(sites - {d.site for d in devices}):
        raise f["sites"].error(f"site {unknown_sites[0]} has no enrolled device in the inventory "
                               f"({closest(unknown_sites[0], {d.site for d in devices})})")
    return Wave(name=name, devices=frozenset(named), sites=frozenset(sites),
                upto=round(_percent(f["percent"]) * 100) if "percent" in f else None,
                not_before=_time(f["not_before"]) if "not_before" in f else None)


def _check_sites_apart(plan: Plan, devices: list[Device], path: Path) -> None:
    """A device a wave names by ID must not be at a site another wave names: it would be in both."""
    site_of = {d.device: d.site for d in devices}
    wave_of_site = {site: wave.name for wave in plan.waves for site in wave.sites}
    for wave in plan.waves:
        for device in sorted(wave.devices):
            other = wave_of_site.get(site_of.get(device, ""))
            if other is not None and other != wave.name:
                raise InputError(f"{path}: waves {wave.name} and {other} overlap: {wave.name} names device {device}, "
                                 f"which is at site {site_of[device]}")


def _percent(field: Field) -> float:
    value = field.value
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        number = Decimal(str(text)) if isinstance(text, str | int | float) and not isinstance(text, bool) else Decimal("NaN")
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():
        field.fail("a percentage (e.g. 10 or 10%)")
    if not 0 <= number <= 100 or number * 100 != (number * 100).to_integral_value():
        field.fail("a percentage from 0 to 100, to a hundredth at most")
    return float(number)


def _time(field: Field) -> dt.datetime:
    value = field.value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            field.fail("a UTC time such as 2026-12-04T06:00:00Z")
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        field.fail("a time with its zone, such as 2026-12-04T06:00:00Z")
    if not YEARS[0] <= value.astimezone(dt.UTC).year <= YEARS[1]:  # what a device reads in a plan
        field.fail(f"a time from {YEARS[0]} to {YEARS[1]}")
    return value.astimezone(dt.UTC)


def _check_reason(reason: str) -> None:
    if not is_reason(reason):
        raise InputError("a reason is one line of printable text, at most 200 characters (devices show it in their status)")


class Rollouts:
    """The rollouts a repository signs (its ``rollout`` role), changed one signed step at a time."""

    def __init__(self, repo: Repository, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self.repo = repo
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    def get(self, app: str, version: str) -> Plan:
        plan = next((p for p in self.repo.plans() if (p.app, p.version) == (app, version)), None)
        if plan is None:
            raise InputError(f"no rollout of {app} {version} in {self.repo.directory} (start one with `sealift rollout plan`)")
        return plan

    def start(self, plan: Plan) -> Plan:
        """Sign a new plan, its first wave open."""
        if any((p.app, p.version) == (plan.app, plan.version) for p in self.repo.plans()):
            raise Conflict(f"{plan.app} {plan.version} has a rollout already; steer it with advance, pause, resume or halt")
        signed = self.repo.signed_versions(plan.app)
        if plan.version not in signed:
            raise InputError(f"{plan.app} {plan.version} is not signed in {self.repo.directory} (sign its bundles with "
                             "`sealift repo add` first)")
        self.repo.sign_plan(plan)
        return plan

    def advance(self, app: str, version: str, *, failing: Callable[[Plan], str | None] = lambda _: None) -> Plan:
        """Open the next wave; Conflict when the rollout is paused, halted or fully open, or when ``failing``
        says why an open wave fails its threshold (as ``rollout check`` finds it)."""
        plan = self.get(app, version)
        if plan.state is not State.RUNNING:
            raise Conflict(f"the rollout of {app} {version} is {plan.state.value}; resume it first" if plan.state is State.PAUSED
                           else f"the rollout of {app} {version} is halted; a halted rollout stays halted (plan a fixed release)")
        if plan.opened >= len(plan.waves):
            raise Conflict(f"every wave of the rollout of {app} {version} is open already")
        if why := failing(plan):
            raise Conflict(f"the rollout of {app} {version} may not advance: {why}")
        return self._sign(plan, opened=plan.opened + 1)

    def pause(self, app: str, version: str, *, reason: str = "") -> Plan:
        _check_reason(reason)
        plan = self.get(app, version)
        if plan.state is State.HALTED:
            raise Conflict(f"the rollout of {app} {version} is halted")
        return self._sign(plan, state=State.PAUSED, reason=reason)

    def resume(self, app: str, version: str) -> Plan:
        plan = self.get(app, version)
        if plan.state is not State.PAUSED:
            raise Conflict(f"the rollout of {app} {version} is {plan.state.value}, not paused")
        return self._sign(plan, state=State.RUNNING, reason="")

    def halt(self, app: str, version: str, *, reason: str, rollback: bool = True) -> Plan:
        """Stop the rollout for good; with ``rollback``, devices that run the release go back to the previous one."""
        _check_reason(reason)
        plan = self.get(app, version)
        if plan.state is State.HALTED and plan.rollback == rollback:
            return plan
        return self._sign(plan, state=State.HALTED, reason=reason, rollback=rollback)

    def _sign(self, plan: Plan, **changes: Any) -> Plan:
        changed = plan.changed_to(self.now(), **changes)
        self.repo.sign_plan(changed)
        return changed

    def publish(self, registries: tuple[str, ...], *, plain_http: bool) -> list[str]:
        """Publish the repository's current metadata (every role, the plans with them) to each registry repository."""
        from bundler.publish import publish_metadata

        files = self.repo.current_files()
        written = []
        for where in registries:
            client = connect(where, plain_http=plain_http, what="registry")
            try:
                written += [f"{client.ref.name}: {name}" for name in publish_metadata(client, files)]
            finally:
                client.close()
        return written
