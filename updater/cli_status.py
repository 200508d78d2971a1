"""``sealift-updater status``: what runs of each application, what happened last, and what the device last saw."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from updater.errors import SealiftError, Unhealthy
from updater.exits import emit, fail, reports_errors

if TYPE_CHECKING:
    from updater.install import Serving
    from updater.slots import DeviceState

__all__ = ["status"]


@click.command()
@click.argument("app", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@click.pass_obj
@reports_errors
def status(state_dir: Path, app: str | None, as_json: bool) -> None:
    """What runs of each application (or of APP), in which slot, what happened last (with its
    health checks' timings in --json), the history; the device's enrollment and profile, when its
    signed metadata expires, and each registry's last poll.

    For each committed release, the engine is asked whether it serves: exit 7 when one does not, 6
    when the engine does not answer (the state is printed either way).

    \b
    Examples:
      sealift-updater status
      sealift-updater status vision-app --json
    """
    from updater.apps import Apps
    from updater.identity import DeviceIdentity
    from updater.lastseen import last_health, last_polls, trusted_expiries, updater_version

    apps = Apps(state_dir)
    states = {name: apps.slots(name).load() for name in ([apps.only(app)] if app else apps.names())}
    identity = DeviceIdentity(state_dir)
    record = identity.record() if identity.enrolled() else None
    engines = {name: _serving(state_dir, name, state) for name, state in states.items()}
    expires = trusted_expiries(state_dir)
    polls = last_polls(state_dir)
    faults = [fault for _, fault in engines.values() if fault is not None]
    unserved = [str(serving) for serving, _ in engines.values() if serving is not None and not serving.ok]
    problem = faults[0] if faults else Unhealthy(unserved[0]) if unserved else None
    if as_json:
        result = {
            "apps": {name: {**state.to_json(), "serving": _engine_json(*engines[name]), "last_health": last_health(state_dir, name)
                            or None} for name, state in states.items()},
            "enrollment": record, "profile": record.get("profile") if record else None, "updater": updater_version(),
            "metadata_expires": expires, "last_poll": polls}
        if problem is not None:
            fail(problem, as_json=True, result=result)
        emit(result, as_json=True)
        return
    for name, state in states.items():
        _print_state(name, state, *engines[name])
    if not states:
        click.echo("nothing installed")
    click.echo(f"device: {record['device']} at site {record['site']} ({record['kem']}, profile {record.get('profile')})"
               if record else "device: not enrolled (`sealift-updater enroll --site SITE`)")
    if expires:
        soonest = min(expires.items(), key=lambda item: item[1])
        click.echo(f"signed metadata: {soonest[0]} expires first, at {soonest[1]}")
    for source, poll in sorted(polls.items()):
        click.echo(f"last poll of {source}: {poll.get('time')} " + ("ok" if poll.get("ok") else
                                                                    f"failed ({poll.get('fault')}: {poll.get('error')})"))
    if problem is not None:
        sys.exit(problem.exit_code)


def _print_state(name: str, state: DeviceState, serving: Serving | None, fault: SealiftError | None) -> None:
    current = (f"{state.current.version} (slot {state.current.slot}"
               + (f", site overlay {state.current.overlay})" if state.current.overlay else ")")) if state.current else "nothing"
    click.echo(f"{name}\n  running: {current}\n  phase:   {state.phase.value}{': ' + state.reason if state.reason else ''}")
    if state.fault == "deferred":  # a staged rollout holds a newer release back: say so on a line of its own
        click.echo(f"  waiting: {state.reason.removeprefix('deferred: ')}")
    if state.current is not None:
        click.echo(f"  engine:  {serving}" if serving else f"  engine:  cannot tell what runs ({fault.diagnostics() if fault else ''})")
    for event in state.history[-10:]:
        click.echo(f"    {event.get('phase', '?'):13} {event.get('release', ''):28} {event.get('reason', '')}")


def _engine_json(serving: Serving | None, fault: SealiftError | None) -> dict[str, Any] | None:
    if fault is not None:
        return {"ok": False, "fault": fault.fault, "error": fault.diagnostics()}
    return serving.to_json() if serving else None


def _serving(state_dir: Path, name: str, state: DeviceState) -> tuple[Serving | None, SealiftError | None]:
    """What the engine runs of application ``name``'s committed release (None when nothing is
    committed), or why it cannot tell."""
    if state.current is None:
        return None, None
    from updater.docker_runtime import DockerRuntime
    from updater.install import Installer

    try:
        return Installer(state_dir=state_dir, runtime=DockerRuntime.connect(), profile=None).app(name).serving(state), None
    except SealiftError as e:
        return None, e

