"""``sealift-updater``: the device side. A thin shell over the updater package."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from updater.cli_login import add_login
from updater.completion import add_completion
from updater.errors import FAMILIES, Conflict, DeviceFault, EngineFault, InputError, SealiftError, Unhealthy
from updater.exits import JsonGroup, emit, fail, reports_errors
from updater.registry_tls import use_ca_file
from updater.sealed import KEMS

if TYPE_CHECKING:
    from updater.install import Outcome
    from updater.profiles import Profile
    from updater.runtime import EngineFeatures

__all__ = ["cli", "main"]

DEFAULT_STATE_DIR = Path("/var/lib/sealift")


@click.group(cls=JsonGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sealift")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_STATE_DIR,
              show_default=True, help="Where the device keeps its slots, trusted metadata and state.")
@click.option("--ca-file", type=click.Path(dir_okay=False), metavar="PEM",
              help="Check the site registry's TLS certificate against these CAs (else certs.d/HOST:PORT/ca.crt).")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path, ca_file: str | None) -> None:
    """Verify and install Sealift bundles on this device, offline.

    Provision the device once with the repository's root metadata (`trust init`); every bundle
    is then checked against it: TUF signatures, versions and expiry, every blob's digest, and
    the hardware profile.

    \b
    Examples:
      sealift-updater trust init root.json && sealift-updater install /media/usb
      sealift-updater --state-dir /data/sealift status"""
    ctx.obj = state_dir
    use_ca_file(ca_file)


@cli.group()
def trust() -> None:
    """The device's trusted TUF root and metadata.

    \b
    Examples:
      sealift-updater trust init root.json"""


@trust.command("init")
@click.argument("root", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace a trusted root the device already has.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@reports_errors
def trust_init(state_dir: Path, root: Path, force: bool, as_json: bool) -> None:
    """Provision this device with ROOT (the repository's root.json): the one trusted starting point.

    \b
    Examples:
      sealift-updater trust init root.json          # once, when the device is provisioned"""
    from updater.trust import TrustedState

    state = TrustedState(state_dir)
    trusted = state.init(root, force=force)
    expired = state.expired(trusted)
    result = {"root_version": trusted.version, "expires": trusted.expires.isoformat(), "expired": expired, "state_dir": str(state_dir)}
    emit(result, as_json=as_json, text=f"trusted root version {trusted.version}, expires {trusted.expires:%Y-%m-%d}")
    if expired:
        click.echo(f"warning: root version {trusted.version} expired on {trusted.expires:%Y-%m-%d}; the device starts "
                   "from it, and verifies nothing until a bundle or a poll brings the newer roots that follow it", err=True)


@trust.command("reset-clock")
@click.option("--json", "as_json", is_flag=True, help="Print the result in the JSON envelope.")
@click.pass_obj
@reports_errors
def trust_reset_clock(state_dir: Path, as_json: bool) -> None:
    """Forget the newest trusted time, after a clock that ran ahead has been corrected.

    The device refuses to verify while its clock reads earlier than the newest time at which it
    accepted a bundle; if that time came from a clock that was wrong, this lets it start again.

    \b
    Examples:
      sealift-updater trust reset-clock"""
    from updater.trust import TrustedState

    newest = TrustedState(state_dir).reset_clock()
    emit({"forgotten": newest.isoformat() if newest else None}, as_json=as_json,
         text=f"forgot the newest trusted time ({newest:%Y-%m-%d %H:%M}Z)" if newest else "no trusted time was recorded")


@cli.group()
def ingress() -> None:
    """The device's ingress: HAProxy in front of the applications' routes (docs/updater.md).

    \b
    Examples:
      sealift-updater ingress init --port 80"""


@ingress.command("init")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="The port the ingress listens on.")
@click.option("--tls-port", type=click.IntRange(1, 65535), help="The port it serves HTTPS on, for routes with `tls`.")
@click.option("--address", default="", help="The address it listens on (default: every address).")
@click.option("--force", is_flag=True, help="Set it up again (then run `recover`: it restores every route).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@reports_errors
def ingress_init(state_dir: Path, port: int, tls_port: int | None, address: str, force: bool, as_json: bool) -> None:
    """Give this device an ingress: write HAProxy's configuration (no routes yet) to
    STATE/ingress/haproxy.cfg. Start HAProxy with it as a service
    (examples/systemd/sealift-ingress.service); from then on, each install, rollback and recovery
    keeps its routes up to date, and a release whose services publish no host port switches
    through it with no dropped request.

    \b
    Examples:
      sealift-updater ingress init --port 80 --tls-port 443"""
    from updater.ingress import Ingress

    if Ingress.of(state_dir) is not None and not force:
        raise Conflict(f"{state_dir}: this device has an ingress already; --force sets it up again (then run `recover`)")
    config = Ingress(state_dir).init(port=port, address=address, tls_port=tls_port)
    emit({"config": str(config), "port": port, "tls_port": tls_port, "address": address}, as_json=as_json,
         text=f"ingress on {address or '*'}:{port}: start HAProxy with {config} (examples/systemd/sealift-ingress.service)")


@cli.command()
@click.option("--site", required=True, help="The site this device serves (its overlays and secrets are that site's).")
@click.option("--kem", type=click.Choice(KEMS), default="x25519", show_default=True,
              help="The key type: X25519, or the hybrid ML-KEM-768 + X25519 for devices whose secrets must stay "
                   "confidential for decades.")
@click.option("--profile", metavar="NAME", help="This device's hardware profile (default: detected).")
@click.option("--profiles-dir", type=click.Path(path_type=Path, file_okay=False), help="Extra profile directory.")
@click.option("--force", is_flag=True, help="Make new keys even though the device is enrolled (the old record stops working).")
@click.option("--json", "as_json", is_flag=True, help="Print the record inside the JSON envelope.")
@click.pass_obj
@reports_errors
def enroll(state_dir: Path, site: str, kem: str, profile: str | None, profiles_dir: Path | None, force: bool, as_json: bool) -> None:
    """Create this device's key pairs (for secrets, and for signing its reports) and print its
    enrollment record (JSON).

    The private keys stay in STATE/identity/device.key and signing.key, readable by root only.
    Give the record to the build machine: `sealift devices add RECORD.json`.

    \b
    Examples:
      sealift-updater enroll --site plant-7 > device.json"""
    from updater.identity import DeviceIdentity

    record = DeviceIdentity(state_dir).enroll(site=site, profile=_device_profile(profile, profiles_dir).name, kem=kem,
                                                   force=force)
    emit(record, as_json=as_json, text=json.dumps(record, indent=2))
    click.echo(f"enrolled {record['device']} at site {site}; add the record above with `sealift devices add`", err=True)


@cli.command()
@click.option("--sysroot", type=click.Path(path_type=Path, file_okay=False), default=Path("/"), show_default=True,
              help="Where to read /sys, /proc and /dev from (a mounted image, a test tree).")
@click.option("--machine", help="The CPU architecture as `uname -m` prints it (default: this machine's).")
@click.option("--profiles-dir", type=click.Path(path_type=Path, file_okay=False), help="Extra profile directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def detect(sysroot: Path, machine: str | None, profiles_dir: Path | None, as_json: bool) -> None:
    """Which hardware profile this device matches, with the evidence for it, and whether a container can
    reach its accelerator here: the device nodes and files the profile's container.accelerator names,
    and its container runtime registered in the engine (not asked with --sysroot). Exits 5 when the
    accelerator is not usable.

    \b
    Examples:
      sealift-updater detect --sysroot /mnt/image --machine aarch64 --json"""
    from updater.detect import Hardware, accelerator_check, detect_profile
    from updater.profiles import load_profiles, profile_search_path

    known = load_profiles(profile_search_path(extra=[profiles_dir] if profiles_dir else []))
    found = detect_profile(known.values(), Hardware(sysroot, machine=machine))
    check = accelerator_check(found.profile, root=sysroot, engine=_engine_features() if sysroot == Path("/") else None)
    evidence = [{"rule": str(rule), "proof": proof} for rule, proof in found.evidence]
    if as_json:
        result = {"profile": found.profile.name, "compatible": found.profile.compatible, "evidence": evidence,
                  "accelerator": check.to_json()}
        if check.missing:
            fail(DeviceFault(f"{found.profile.name}: accelerator: {check}"), as_json=True, result=result)
        emit(result, as_json=True)
    else:
        click.echo(f"{found.profile.name} ({found.profile.description})")
        for item in evidence:
            click.echo(f"  {item['rule']:32} {item['proof']}")
        click.echo(f"accelerator: {check}")
    if check.missing:
        sys.exit(DeviceFault.exit_code)


def _engine_features() -> EngineFeatures | None:
    """What the engine offers containers, or None when it does not answer (detect says so)."""
    from updater.docker_runtime import DockerRuntime

    try:
        return DockerRuntime.connect().features()
    except EngineFault:
        return None


def _device_profile(profile: str | None, profiles_dir: Path | None) -> Profile:
    from updater.detect import Hardware, detect_profile
    from updater.profiles import load_profiles, profile_search_path

    known = load_profiles(profile_search_path(extra=[profiles_dir] if profiles_dir else []))
    if profile is None:
        return detect_profile(known.values(), Hardware()).profile
    if profile not in known:
        from updater.names import unknown

        raise InputError(unknown("profile", profile, known))
    return known[profile]


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("overlay", type=click.Path(path_type=Path), required=False)
@click.option("--profile", metavar="NAME", help="This device's hardware profile (default: detected).")
@click.option("--profiles-dir", type=click.Path(path_type=Path, file_okay=False), help="Extra profile directory.")
@click.option("--app", metavar="NAME", help="The application to install from a medium that holds several.")
@click.option("--force", is_flag=True, help="Try a release again that failed its health checks before.")
@click.option("--ignore-window", is_flag=True,
              help="Install outside the site's maintenance window (journaled); the rollout's waves, pause and halt still hold.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
@reports_errors
def install(state_dir: Path, bundle: Path, overlay: Path | None, profile: str | None, profiles_dir: Path | None, app: str | None,
            force: bool, ignore_window: bool, as_json: bool) -> None:
    """Install BUNDLE (with the site OVERLAY) beside the running release, switch, and keep it only if healthy.

    Each application has its own slots and history; installing one never touches another. Steps:
    verify, stage into the inactive slot, load images, record `trying`, switch, health checks,
    then commit or roll back (exit 7; 6 when the engine would not start it; docs/errors.md). The
    site overlay's configuration and secrets go and roll back with the release; without one, the
    running overlay is carried over if it fits. BUNDLE may be an overlay alone (the running
    release restarts with it), or a medium from `sealift export` (a directory or .tar): its newest
    bundle for this profile, with the newest fitting overlay for this site (--app when it holds
    several applications). A release under a staged rollout goes in only when its plan lets this
    device (wave, maintenance window, not paused or halted); else it exits 8 saying why.

    \b
    Examples:
      sealift-updater install vision-app-1.4.0-jetson-orin vision-app-site-plant-7-3.0.0
      sealift-updater install /media/usb --app vision-app   # the newest release on a medium"""
    from updater.docker_runtime import DockerRuntime
    from updater.install import Installer

    installer = Installer(state_dir=state_dir, runtime=DockerRuntime.connect(), profile=_device_profile(profile, profiles_dir),
                          log=lambda line: click.echo(line, err=True))
    outcome = installer.install(bundle, overlay=overlay, force=force, app=app, ignore_window=ignore_window)
    verb = "running" if outcome.committed else "rolled back from"
    _ended(outcome, as_json, f"{verb} {outcome.release.name} {outcome.release.version} (slot {outcome.release.slot}): {outcome.reason}")


def _ended(outcome: Outcome, as_json: bool, text: str) -> None:
    """An install's or a rollback's outcome: exit 0 when it committed, else the code of its fault."""
    result = {"committed": outcome.committed, "release": vars(outcome.release), "reason": outcome.reason}
    if not outcome.committed:
        if not as_json:
            click.echo(text)
        fail(FAMILIES.get(outcome.fault, Unhealthy)(outcome.reason), as_json=as_json, result=result)
    emit(result, as_json=as_json, text=text)


@cli.command()
@click.argument("app", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
@reports_errors
def rollback(state_dir: Path, app: str | None, as_json: bool) -> None:
    """Return APP to its previous release (still staged in its other slot), health-checked like an
    install. APP may be left out on a device with one application; the others are not touched.

    \b
    Examples:
      sealift-updater rollback vision-app"""
    from updater.docker_runtime import DockerRuntime
    from updater.install import Installer

    installer = Installer(state_dir=state_dir, runtime=DockerRuntime.connect(), profile=None,
                          log=lambda line: click.echo(line, err=True))
    outcome = installer.rollback(app)
    _ended(outcome, as_json, f"{'running' if outcome.committed else 'stayed on the current release; could not return to'} "
           f"{outcome.release.name} {outcome.release.version}: {outcome.reason}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--profile", metavar="NAME", help="This device's hardware profile: refuse bundles built for another.")
@click.option("--profiles-dir", type=click.Path(path_type=Path, file_okay=False), help="Extra profile directory.")
@click.option("--app", metavar="NAME", help="The application to check on a medium that holds several.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@reports_errors
def verify(state_dir: Path, bundle: Path, profile: str | None, profiles_dir: Path | None, app: str | None, as_json: bool) -> None:
    """Check BUNDLE (a bundle, a site overlay, or a medium) the way an install does: signed
    metadata, every blob, the hardware profile; for an overlay also the site, the release it
    would run with, and that this device's key opens its secrets (their values are not shown). On
    a medium, what an install would take: this device's bundle (a delta is completed from the
    device's own store) and its site's overlay.

    Offline: the metadata comes from the bundle's tuf/ folder. The device's trusted metadata
    advances only when every check passes.

    \b
    Examples:
      sealift-updater verify /media/usb --app vision-app"""
    from updater.install import check_as_installed
    from updater.profiles import load_profiles, profile_search_path
    from updater.trust import TrustedState

    wanted = None
    if profile is not None:
        known = load_profiles(profile_search_path(extra=[profiles_dir] if profiles_dir else []))
        if profile not in known:
            from updater.names import unknown

            raise InputError(unknown("profile", profile, known))
        wanted = known[profile]
    trust = TrustedState(state_dir)
    info, overlay = check_as_installed(bundle, trust=trust, profile=wanted, app=app)
    expires = trust.expiries()  # the device's, which now include what the check verified
    if as_json:
        emit({**(info.to_json() if info else {}), **({"overlay": overlay.to_json()} if overlay else {}),
              "metadata_expires": expires}, as_json=True)
        return
    if info is not None:
        click.echo(f"ok {info.name} {info.version} for {info.profile}  {info.digest}")
    if overlay is not None:
        click.echo(f"ok {overlay.name} overlay {overlay.version} for site {overlay.site}  {overlay.digest}")
    if expires:
        role, when = min(expires.items(), key=lambda item: item[1])
        click.echo(f"   signed metadata: {role} expires first, at {when}")


def _add_commands() -> None:
    from updater.cli_report import report
    from updater.cli_service import recover, run
    from updater.cli_status import status

    for command in (report, status, run, recover):
        cli.add_command(command)
    add_completion(cli, "sealift-updater")
    add_login(cli, "sealift-updater", device=True)


def main() -> None:
    """Entry point of the ``sealift-updater`` command: its options from the command line, the
    environment (``SEALIFT_…``) and the configuration file, in that order (:mod:`updater.config`)."""
    from updater.config import load_defaults
    from updater.exits import fail

    try:
        defaults = load_defaults(cli)
    except SealiftError as e:
        fail(e)
    cli(prog_name="sealift-updater", default_map=defaults)


_add_commands()
