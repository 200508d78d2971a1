"""``sealift-updater``: the device side. A thin shell over the updater package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bundler.errors import SealiftError
from bundler.profiles import load_profiles, profile_search_path
from updater.verify import verify_for_device

__all__ = ["main"]

DEFAULT_STATE_DIR = Path("/var/lib/sealift")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sealift")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_STATE_DIR,
              show_default=True, help="Where the device keeps its slots, trusted metadata and state.")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path) -> None:
    """Verify and install Sealift bundles on this device."""
    ctx.obj = {"state_dir": state_dir}


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--profile", metavar="NAME", help="Refuse the bundle unless it was built for this hardware profile.")
@click.option("--profiles-dir", type=click.Path(path_type=Path, file_okay=False), help="Extra profile directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(bundle: Path, profile: str | None, profiles_dir: Path | None, as_json: bool) -> None:
    """Check BUNDLE the way an install would, without changing anything."""
    try:
        wanted = None
        if profile is not None:
            known = load_profiles(profile_search_path(extra=[profiles_dir] if profiles_dir else []))
            if profile not in known:
                raise SealiftError(f"unknown profile {profile!r} (known: {', '.join(sorted(known))})")
            wanted = known[profile]
        info = verify_for_device(bundle, profile=wanted)
    except SealiftError as e:
        if as_json:
            click.echo(json.dumps({"bundle": str(bundle), "ok": False, "error": e.diagnostics()}))
        click.echo(f"error: {e.diagnostics()}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"ok": True, **info.to_json()}, indent=2))
    else:
        click.echo(f"ok {info.name} {info.version} for {info.profile}  {info.digest}")


def main() -> None:
    """Entry point of the ``sealift-updater`` command."""
    cli(prog_name="sealift-updater")
