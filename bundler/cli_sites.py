"""``sealift overlay`` and ``sealift devices``: per-site configuration and secrets, and the inventory
of enrolled devices they are sealed to (see docs/secrets.md)."""

from __future__ import annotations

from pathlib import Path

import click

from updater.exits import emit, reports_errors

__all__ = ["allow_dir_option", "devices", "overlay"]

allow_dir_option = click.option(
    "--allow-dir", "allowed_dirs", multiple=True, envvar="SEALIFT_ALLOW_DIRS",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A directory outside the spec's own that its paths may name (repeatable; or SEALIFT_ALLOW_DIRS, "
         "separated by ':'), such as where CI writes secret files. Everything else must resolve inside the "
         "spec's directory.",
)


@click.group()
def overlay() -> None:
    """Per-site overlays: a site's configuration values and its secrets, sealed to its devices.

    \b
    Examples:
      sealift overlay build sealift.yaml --site plant-7
    """


@overlay.command("build")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--site", required=True, help="The site to build the overlay for.")
@click.option("--site-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The site's values (version, fits, environment). Default: sites/SITE.yaml beside the spec.")
@click.option("--inventory", type=click.Path(path_type=Path, dir_okay=False), default=Path("devices.yaml"), show_default=True,
              help="The fleet inventory: the site's enrolled, unrevoked devices are the recipients.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("out"), show_default=True,
              help="Directory that receives the overlay.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@allow_dir_option
@reports_errors
def overlay_build(spec: Path, site: str, site_file: Path | None, inventory: Path, out: Path, as_json: bool,
                  allowed_dirs: tuple[Path, ...]) -> None:
    """Build SITE's overlay for the application SPEC describes.

    Secret values come from where the spec's `secrets` say (an environment variable or a file) and
    are sealed with HPKE to the site's enrolled devices; only ciphertext is written. Sign the
    overlay with `sealift repo add` and deliver it like a bundle. See docs/secrets.md.

    \b
    Examples:
      sealift overlay build sealift.yaml --site plant-7     # values from sites/plant-7.yaml
      sealift overlay build sealift.yaml --site plant-7 --inventory fleet/devices.yaml --out dist/
    """
    from bundler.overlay import build_overlay
    from bundler.spec import load_spec

    path, info = build_overlay(load_spec(spec, allowed_dirs=allowed_dirs), site, inventory=inventory, out=out, site_file=site_file)
    if as_json:
        emit({"path": str(path), **info.to_json()}, as_json=True)
        return
    click.echo(f"built {path}  {info.digest}  ({len(info.secrets)} secrets sealed to {len(info.recipients)} devices)")


inventory_option = click.option(
    "--inventory", type=click.Path(path_type=Path, dir_okay=False), default=Path("devices.yaml"), show_default=True,
    help="The fleet inventory (public keys only), kept by the build machine.")


@click.group()
def devices() -> None:
    """The enrolled devices that site secrets are sealed to.

    \b
    Examples:
      sealift devices add device.json
      sealift devices list --site plant-7
    """


@devices.command("add")
@click.argument("records", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False), metavar="RECORD...")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the device (a list of them for several records) as JSON.")
@reports_errors
def devices_add(records: tuple[Path, ...], inventory: Path, as_json: bool) -> None:
    """Enroll the devices described by RECORD... (what `sealift-updater enroll` printed on each), in
    one change of the inventory: all of them, or none when one record is wrong.

    \b
    Examples:
      sealift devices add device-0017.json
      sealift devices add plant-7/*.json --inventory fleet/devices.yaml
    """
    from bundler.devices import Inventory

    added = Inventory(inventory).add_all(list(records))
    if as_json:
        emit([d.to_json() for d in added], as_json=True)
        return
    for device in added:
        click.echo(f"enrolled {device.device} at site {device.site} ({device.profile}, {device.kem})")


@devices.command("list")
@inventory_option
@click.option("--site", help="Only this site's devices.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def devices_list(inventory: Path, site: str | None, as_json: bool) -> None:
    """List the enrolled devices (revoked ones too, marked).

    \b
    Examples:
      sealift devices list
      sealift devices list --site plant-7 --json
    """
    from bundler.devices import Inventory

    listed = [d for d in Inventory(inventory).devices() if site is None or d.site == site]
    if as_json:
        emit([d.to_json() for d in listed], as_json=True)
        return
    for d in listed:
        state = f"revoked {d.revoked}" if d.revoked else f"enrolled {d.enrolled}"
        click.echo(f"{d.device}  {d.site:16}  {d.profile:18}  {d.kem:16}  {state}")


@devices.command("revoke")
@click.argument("device")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the device as JSON.")
@reports_errors
def devices_revoke(device: str, inventory: Path, as_json: bool) -> None:
    """Revoke DEVICE: it is left out of every secret sealed from now on, so it can read nothing new.

    What it could already read stays readable to it: rotate the site's secrets (build and deliver a
    new overlay) after revoking a device that was lost or stolen.

    \b
    Examples:
      sealift devices revoke dev-3f2a9c41e07b5d8a6c1f4e2b9d0a7c35
    """
    from bundler.devices import Inventory

    revoked = Inventory(inventory).revoke(device)
    emit(revoked.to_json(), as_json=as_json, text=f"revoked {revoked.device} (site {revoked.site}) on {revoked.revoked}")


@devices.command("label")
@click.argument("device")
@click.argument("labels", nargs=-1, metavar="KEY=VALUE...")
@inventory_option
@click.option("--remove", multiple=True, metavar="KEY", help="Remove this label (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the device as JSON.")
@reports_errors
def devices_label(device: str, labels: tuple[str, ...], inventory: Path, remove: tuple[str, ...], as_json: bool) -> None:
    """Set labels of DEVICE (ring=canary); rollout plans select waves by them.

    \b
    Examples:
      sealift devices label dev-3f2a9c41e07b5d8a6c1f4e2b9d0a7c35 ring=canary
      sealift devices label dev-3f2a9c41e07b5d8a6c1f4e2b9d0a7c35 --remove ring
    """
    from bundler.devices import Inventory

    pairs = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, found {item!r}", param_hint="LABELS")
        pairs[key] = value
    changed = Inventory(inventory).label(device, add=pairs, remove=remove)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(changed.labels.items())) or "none"
    emit(changed.to_json(), as_json=as_json, text=f"{changed.device}: labels {shown}")


@devices.command("window")
@click.argument("site")
@inventory_option
@click.option("--timezone", help="The site's IANA time zone (e.g. Europe/Berlin); the windows are in its local time.")
@click.option("--window", "windows", multiple=True, metavar="'DAYS HH:MM-HH:MM'",
              help="A maintenance window, e.g. 'Sat 02:00-06:00', 'Mon-Fri 22:00-04:00', 'daily 01:00-03:00' (repeatable).")
@click.option("--remove", is_flag=True, help="Remove the site's windows: its devices install whenever their wave is open.")
@click.option("--json", "as_json", is_flag=True, help="Print the site's windows as JSON.")
@reports_errors
def devices_window(site: str, inventory: Path, timezone: str | None, windows: tuple[str, ...], remove: bool, as_json: bool) -> None:
    """Declare SITE's maintenance windows: its devices switch releases of a staged rollout only inside
    them (rollout plans signed from now on carry them).

    \b
    Examples:
      sealift devices window plant-a --timezone Europe/Berlin --window 'Sat 02:00-06:00'
      sealift devices window plant-a --remove
    """
    from bundler.devices import Inventory
    from updater.errors import InputError
    from updater.windows import Maintenance

    if remove and (timezone or windows):
        raise InputError("--remove takes the site's windows away: give it alone, or --timezone and --window without it")
    if remove:
        Inventory(inventory).set_window(site, None)
        emit({"site": site, "maintenance": None}, as_json=as_json, text=f"site {site}: no maintenance window")
        return
    if not timezone or not windows:
        raise InputError("give the site's --timezone and at least one --window (or --remove)")
    maintenance = Maintenance.from_json({"timezone": timezone, "windows": list(windows)}, InputError, f"site {site}")
    Inventory(inventory).set_window(site, maintenance)
    emit({"site": site, "maintenance": maintenance.to_json()}, as_json=as_json, text=f"site {site}: maintenance {maintenance}")
