"""``sealift fleet``: the devices' signed reports, imported into an embedded database, and the fleet they describe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bundler.cli_sites import inventory_option
from updater.exits import emit, fail, reports_errors

__all__ = ["fleet", "reports"]

_db_option = click.option("--db", type=click.Path(path_type=Path, dir_okay=False), default=Path("fleet.db"), show_default=True,
                          help="The fleet database (SQLite; made on first import; nothing to run).")


@click.group()
def fleet() -> None:
    """What the devices report: import their signed reports, and see the fleet (docs/reports.md).

    \b
    Examples:
      sealift fleet import /media/usb && sealift fleet status
    """


@fleet.command("import")
@click.argument("source", metavar="MEDIUM|REGISTRY/PREFIX")
@_db_option
@inventory_option
@click.option("--plain-http", is_flag=True, help="Reach the registry over plain HTTP, not TLS.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def fleet_import(source: str, db: Path, inventory: Path, plain_http: bool, as_json: bool) -> None:
    """Import the devices' reports into the fleet database: those a medium brought back from a
    site (a directory holding a sealift-reports folder), or those a registry holds under a prefix
    (one repository per device, as devices push them and `sealift reports sync` copies them).

    Each report must be signed by the report key the inventory holds for its device. A forged,
    altered, truncated or replayed report, or one from an unknown or revoked device, is refused
    and counted, never imported; one imported before is counted as a duplicate. Exits 3 when any
    was refused (the others are imported all the same).

    \b
    Examples:
      sealift fleet import /media/usb                       # a stick back from a site
      sealift fleet import registry.example.com/reports --db /srv/sealift/fleet.db
    """
    from bundler.devices import Inventory
    from bundler.fleet import FleetDatabase
    from updater.errors import InputError, Refused

    medium = Path(source)
    if not medium.is_dir() and source.startswith(("/", ".", "~")):
        raise InputError(f"{source}: no such directory (a medium holding the devices' reports, or a registry HOST/PREFIX)")
    if medium.is_dir():
        result = FleetDatabase(db).import_medium(medium, Inventory(inventory))
    else:
        result = FleetDatabase(db).import_registry(source, Inventory(inventory), plain_http=plain_http)
    if not as_json:
        click.echo(f"imported {result.imported} report(s), {result.duplicates} already imported, {len(result.refused)} refused")
        for file, why in result.refused:
            click.echo(f"  refused {file}: {why}")
    if result.refused:  # the others were imported all the same
        file, why = result.refused[0]
        more = f" (and {len(result.refused) - 1} more)" if len(result.refused) > 1 else ""
        fail(Refused(f"refused report {file}: {why}{more}"), as_json=as_json, result=result.to_json())
    emit(result.to_json(), as_json=as_json)


@fleet.command("status")
@_db_option
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@reports_errors
def fleet_status(db: Path, inventory: Path, as_json: bool) -> None:
    """Per site, profile and application, how many devices run which release; who is behind the
    newest release reported; failing devices with their reasons; signed metadata expiring within
    14 days; when each device was last heard from, and the devices never heard from.

    \b
    Examples:
      sealift fleet status
      sealift fleet status --json
    """
    from bundler.devices import Inventory
    from bundler.fleet import FleetDatabase
    from bundler.fleet import fleet_status as status_of

    if not db.exists():
        from updater.errors import InputError

        raise InputError(f"{db}: no fleet database yet: `sealift fleet import MEDIUM` makes it")
    with FleetDatabase(db).connect() as connection:
        status = status_of(connection, Inventory(inventory))
    if as_json:
        emit(status, as_json=True)
        return
    _print(status)


@fleet.command("report")
@click.option("--html", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Write the page here: one self-contained file, no server, opens from a USB stick.")
@_db_option
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@reports_errors
def fleet_report(out: Path, db: Path, inventory: Path, as_json: bool) -> None:
    """Write the fleet as a static HTML page: what runs where, release adoption over time,
    rollbacks by reason, inference latency by release and profile, sites not heard from, failing
    devices and metadata expiring soon (plots as inline SVG; no script, nothing fetched).

    \b
    Examples:
      sealift fleet report --html fleet.html
      sealift fleet report --html /media/usb/fleet.html --db /srv/sealift/fleet.db
    """
    from bundler.devices import Inventory
    from bundler.fleet import FleetDatabase
    from bundler.fleet_page import render_page
    from updater.durable import replace_file
    from updater.errors import InputError

    if not db.exists():
        raise InputError(f"{db}: no fleet database yet: `sealift fleet import MEDIUM` makes it")
    with FleetDatabase(db).connect() as connection:
        page = render_page(connection, Inventory(inventory)).encode()
    try:
        replace_file(out, page)
    except OSError as e:
        raise InputError(f"{out}: cannot write the page ({e.strerror})") from e
    if as_json:
        emit({"html": str(out), "bytes": len(page)}, as_json=True)
    else:
        click.echo(f"wrote {out} ({len(page)} bytes)")


def _print(status: dict[str, Any]) -> None:
    click.echo(f"{'SITE PROFILE APP':40} RELEASES")
    for key, versions in status["running"].items():
        click.echo(f"{key:40} " + ", ".join(f"{v}: {n}" for v, n in sorted(versions.items())))
    sections: tuple[tuple[str, list[dict[str, Any]], Callable[[dict[str, Any]], str]], ...] = (
        ("behind", status["behind"], lambda r: f"{r['device']} {r['app']} {r['version']} (newest {r['newest']})"),
        ("failing", status["failing"], lambda r: f"{r['device']} {r['app']} {r['version']}: {r['phase']}: {r['reason']}"),
        ("metadata expiring", status["expiring"], lambda r: f"{r['device']} at {r['site']}: {r['expires']}"),
        ("never heard from", status["never_heard"], lambda r: f"{r['device']} at {r['site']}"),
    )
    for title, rows, line in sections:
        if rows:
            click.echo(f"{title}:")
            for row in rows:
                click.echo(f"  {line(row)}")
    click.echo("last heard:")
    for device, seen in status["devices"].items():
        click.echo(f"  {device} at {seen['site']} ({seen['profile']}): report {seen['seq']} made {seen['created']}, "
                   f"imported {seen['heard']}")
    if status["refused_reports"]:
        click.echo(f"refused reports so far: {status['refused_reports']}")


@click.group()
def reports() -> None:
    """Move the devices' signed reports through registries, towards the office (docs/reports.md).

    \b
    Examples:
      sealift reports sync --from 10.20.0.5:5001/reports --to dmz.example.com/reports --plain-http-from
    """


@reports.command("sync")
@click.option("--from", "origin", required=True, metavar="REGISTRY/PREFIX",
              help="Where the reports are: a site mirror's reports registry and the prefix devices push under.")
@click.option("--to", "target", required=True, metavar="REGISTRY/PREFIX", help="The next registry towards the office.")
@click.option("--plain-http", is_flag=True, help="Talk to both registries over plain HTTP.")
@click.option("--plain-http-from", is_flag=True, help="Talk to the source over plain HTTP.")
@click.option("--plain-http-to", is_flag=True, help="Talk to the destination over plain HTTP.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def reports_sync(origin: str, target: str, plain_http: bool, plain_http_from: bool, plain_http_to: bool, as_json: bool) -> None:
    """Copy every device's reports the next registry lacks, one hop towards the office (like
    `mirror sync`, the other way). A report is copied whole or not at all and one already there is
    left alone: a sync cut short is run again, and a second run copies nothing. A report the
    destination holds with other content under the same number is never overwritten: it is named,
    and the sync exits 1. Reports are not verified here; `sealift fleet import` verifies each one.

    \b
    Examples:
      sealift reports sync --from 10.20.0.5:5001/reports --to dmz.example.com/reports --plain-http-from
      sealift reports sync --from dmz.example.com/reports --to registry.example.com/reports
    """
    from bundler.reportsync import sync_reports
    from updater.progress import for_terminal

    progress = for_terminal(quiet=as_json)
    try:
        result = sync_reports(origin, target, plain_http_from=plain_http or plain_http_from,
                              plain_http_to=plain_http or plain_http_to, progress=progress)
    finally:
        progress.close()
    if as_json:
        emit(result.to_json(), as_json=True)
    else:
        click.echo(f"copied {result.copied} report(s) of {len(result.devices)} device(s) to {target}; "
                   f"{result.present} were there already")
        for taken in result.conflicts:
            click.echo(f"  left alone {taken}: the destination holds other content under that number")
    if result.conflicts:
        from updater.errors import Conflict

        raise SystemExit(Conflict.exit_code)
