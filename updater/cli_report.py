"""``sealift-updater report``: a signed report now, and the kept ones onto a medium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from updater.exits import emit, reports_errors

__all__ = ["report"]


@click.command()
@click.option("--to", "medium", type=click.Path(path_type=Path, file_okay=False),
              help="Then copy the kept reports MEDIUM lacks into MEDIUM/sealift-reports/DEVICE/ (a USB stick for the office).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@reports_errors
def report(state_dir: Path, medium: Path | None, as_json: bool) -> None:
    """Make a signed report now: what happened since the last one (the journal) and what runs. It is
    kept with the others in STATE/reports until it goes up to the site mirror or out on a medium
    (the service does both by itself; see docs/reports.md).

    Exits 0 with no report when today's allowance for reports is spent (they are bounded per day).
    A Docker engine that does not answer does not stop it: the report says so.

    \b
    Examples:
      sealift-updater report
      sealift-updater report --to /media/usb        # and the kept ones onto a stick for the office
    """
    from updater.docker_runtime import DockerRuntime
    from updater.errors import EngineFault
    from updater.install import Installer
    from updater.reports import Reports

    try:
        runtime: Any = DockerRuntime.connect()
    except EngineFault as e:  # a report is wanted most when the engine is down: it says so
        runtime = _Unreachable(e)
    reports = Reports(Installer(state_dir=state_dir, runtime=runtime, profile=None))
    made = reports.make()
    copied = reports.to_medium(medium) if medium is not None else None
    carried = len(json.loads(_payload(made))["events"]) if made else 0
    if as_json:
        emit({"report": str(made) if made else None, "seq": int(made.stem) if made else None,
                               "bytes": made.stat().st_size if made else 0, "events": carried,
                               **({"copied": copied} if copied is not None else {})}, as_json=True)
        return
    click.echo(f"report {int(made.stem)}: {made.stat().st_size} bytes, {carried} event(s), {made}" if made else
               "no report: today's allowance for reports is spent (they wait for tomorrow's)")
    if copied is not None:
        click.echo(f"copied {copied} report(s) to {medium}")


class _Unreachable:
    """An engine that does not answer: every question to it is the fault met when connecting."""

    def __init__(self, fault: Exception) -> None:
        self.fault = fault

    def __getattr__(self, name: str) -> Any:
        def unanswered(*_: Any, **__: Any) -> Any:
            raise self.fault

        return unanswered


def _payload(path: Path) -> bytes:
    from securesystemslib.dsse import Envelope

    return Envelope.from_dict(json.loads(path.read_bytes())).payload
