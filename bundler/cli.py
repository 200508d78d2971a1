"""``sealift``: build, inspect and verify update bundles. A thin shell over the bundler package."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bundler.cli_sites import allow_dir_option
from updater.cli_login import add_login
from updater.completion import add_completion
from updater.errors import Refused
from updater.exits import JsonGroup, emit, fail, reports_errors
from updater.progress import for_terminal
from updater.registry_tls import use_ca_file

if TYPE_CHECKING:
    from updater.bundle import BundleInfo

__all__ = ["cli", "main"]

T = TypeVar("T")


_profiles_dir_option = click.option(
    "--profiles-dir", "profiles_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
    help="Another directory of profile YAML files (repeatable); its profiles replace built-in ones of the same name.",
)


@click.group(cls=JsonGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sealift")
@click.option("--ca-file", type=click.Path(dir_okay=False), metavar="PEM",
              help="Check registries' TLS certificates against these CAs (env SEALIFT_CA_FILE; per registry: "
                   "certs.d/HOST:PORT/ca.crt, see docs/site-mirror.md).")
def cli(ca_file: str | None) -> None:
    """Build signed, reproducible update bundles for edge AI devices.

    A bundle is an OCI image layout for one hardware profile: the application's container images
    (by their original digests), its models and configs, and a descriptor the device's updater
    reads. Build with `sealift build`, look inside with `sealift inspect`, check with
    `sealift verify`, sign with `sealift repo`, and deliver with `sealift push` (a registry),
    `sealift mirror sync` (site mirrors) or `sealift export` (removable media).

    \b
    Examples:
      sealift build sealift.yaml --profile jetson-orin
      sealift repo add repo/ out/vision-app-1.4.0-jetson-orin --keys keys/
      sealift push out/vision-app-1.4.0-jetson-orin registry.example.com/vision-app
    """
    use_ca_file(ca_file)


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profiles", multiple=True, metavar="NAME|all",
              help="Build for this profile (repeatable). Default: every profile the spec targets.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("out"), show_default=True,
              help="Directory that receives the bundles.")
@click.option("--format", "fmt", type=click.Choice(["dir", "tar"]), default="dir", show_default=True,
              help="An OCI layout directory, or the same layout as one tar file.")
@click.option("--plain-http", is_flag=True, help="Reach registries named by docker:// sources over plain HTTP, not TLS.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@_profiles_dir_option
@allow_dir_option
@reports_errors
def build(spec: Path, profiles: tuple[str, ...], out: Path, fmt: str, plain_http: bool, as_json: bool,
          profiles_dirs: tuple[Path, ...], allowed_dirs: tuple[Path, ...]) -> None:
    """Build one bundle per hardware profile from SPEC (a sealift.yaml).

    Bundles are named NAME-VERSION-PROFILE and are byte-identical for the same inputs and
    SOURCE_DATE_EPOCH (which defaults to the spec's last git commit time). Each is verified
    before it is moved into place; an existing bundle is kept if identical and refused otherwise.
    Every file the spec names must resolve inside its directory (or an --allow-dir).

    \b
    Examples:
      sealift build sealift.yaml                    # every profile the spec targets, into out/
      sealift build sealift.yaml --profile jetson-orin --format tar --out dist/
    """
    from bundler.build import BuildOptions, build_bundles, select_profiles, source_date_epoch
    from bundler.spec import load_spec
    from updater.profiles import load_profiles, profile_search_path

    loaded = load_spec(spec, allowed_dirs=allowed_dirs)
    known = load_profiles(profile_search_path(loaded.directory, profiles_dirs))
    selected = select_profiles(loaded, known, profiles)
    options = BuildOptions(out=out, format="tar" if fmt == "tar" else "dir",
                           epoch=source_date_epoch(loaded.directory), plain_http=plain_http)
    built = _with_progress(as_json, functools.partial(build_bundles, loaded, selected, options))
    if as_json:
        emit([{"path": str(b.path), "unchanged": b.unchanged, **b.info.to_json()} for b in built], as_json=True)
        return
    for b in built:
        state = "unchanged" if b.unchanged else "built"
        click.echo(f"{state:9} {b.path}  {b.info.digest}  {_size(b.info.size)}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what BUNDLE holds: identity, profile, each component's size and digest, and how each
    service's container runs on its profile (the accelerator it reaches, limits, logs).

    Every blob is checked on the way, so what is shown is what the device would get.

    \b
    Examples:
      sealift inspect out/vision-app-1.4.0-jetson-orin
      sealift inspect out/vision-app-1.4.0-jetson-orin.tar --json
    """
    from updater.artifact import open_artifact
    from updater.bundle import check_bundle
    from updater.tuf_client import carried_expiries

    with open_artifact(bundle) as artifact:
        report = check_bundle(artifact)
        expires = carried_expiries(artifact.reader)
    services = report.bundle.descriptor.app.services
    result = {**report.bundle.to_json(), "services": {s.name: s.to_data() for s in services},
              "metadata_expires": expires, "problems": list(report.problems)}
    if as_json:
        if report.problems:
            more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
            fail(Refused(f"{bundle}: {report.problems[0]}{more}"), as_json=True, result=result)
        emit(result, as_json=True)
    else:
        _print_table(report.bundle)
        click.echo(_expiry_line(expires))
        for service in services:
            click.echo(f"service {service.name} (image {service.image})")
            for setting, value in service.container.summary():
                click.echo(f"  {setting:14} {value}")
        for problem in report.problems:
            click.echo(f"problem: {problem}", err=True)
    if report.problems:
        sys.exit(Refused.exit_code)


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--trusted-root", type=click.Path(path_type=Path, dir_okay=False),
              help="Also check the bundle's signed TUF metadata against this root.json, as a device would.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@reports_errors
def verify(bundles: tuple[Path, ...], trusted_root: Path | None, as_json: bool) -> None:
    """Check each BUNDLE (or medium): structure, and every blob's size and digest (and content digest when compressed).

    A medium from `sealift export` is checked end to end: every file against its SHA256SUMS, and
    every bundle on it complete (a delta may lack only what its base supplies).

    With --trusted-root, first the signed metadata in the bundle's tuf/ folder, as a device does.
    Names each tampered, truncated or missing blob if any check fails, and exits with the code of
    the first fault found (3 for a bad or unsigned bundle; docs/errors.md).

    \b
    Examples:
      sealift verify out/vision-app-1.4.0-jetson-orin --trusted-root repo/metadata/1.root.json
      sealift verify /media/usb                     # a medium from `sealift export`
    """
    from bundler.check import check_path

    results = []
    for path in bundles:
        progress = for_terminal(quiet=as_json)
        try:
            checked = check_path(path, trusted_root=trusted_root, progress=progress)
        finally:
            progress.close()
        results.append(checked)
        if not as_json:
            _print_checked(checked)
    failed = next((r.fault for r in results if r.fault is not None), None)
    if failed is not None:
        if as_json:
            fail(failed, as_json=True, result=[r.to_json() for r in results])
        sys.exit(failed.exit_code)  # each result said why, above
    emit([r.to_json() for r in results], as_json=as_json)


def _expiry_line(expires: dict[str, str]) -> str:
    if not expires:
        return "signed metadata: none (sign it with `sealift repo add`)"
    role, when = min(expires.items(), key=lambda item: item[1])
    return f"signed metadata expires {when} ({role} first; `sealift repo refresh` renews it)"


def _print_checked(checked: Any) -> None:
    for problem in checked.problems:
        click.echo(f"FAILED {checked.path}: {problem}", err=True)
    if checked.problems:
        return
    if checked.medium is None:
        click.echo(f"ok {checked.path}  {checked.digest}")
    else:
        for b in checked.medium.bundles:
            kind = f"delta on {b.base['version']}" if b.base else "complete"
            click.echo(f"ok {checked.path}  {b.name} {b.version} ({b.profile}, {kind})  {b.top.digest}")
        for o in checked.medium.overlays:
            click.echo(f"ok {checked.path}  {o.name} overlay {o.version} (site {o.site})  {o.top.digest}")
    click.echo(f"   {_expiry_line(checked.expires)}")


@cli.command("profiles")
@click.option("--spec", type=click.Path(path_type=Path, dir_okay=False), help="Also load profiles/ next to this spec.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_profiles_dir_option
@reports_errors
def profiles_cmd(spec: Path | None, as_json: bool, profiles_dirs: tuple[Path, ...]) -> None:
    """List the known hardware profiles.

    \b
    Examples:
      sealift profiles
      sealift profiles --spec sealift.yaml --json   # with the spec's own profiles/
    """
    from updater.container import Container
    from updater.profiles import load_profiles, profile_search_path

    known = load_profiles(profile_search_path(spec.parent if spec else None, profiles_dirs))
    if as_json:
        emit([
            {"name": p.name, "platform": str(p.platform), "compatible": p.compatible, "description": p.description,
             "accelerator": Container().with_access(p.access).to_data() if p.access else None, "file": str(p.source)}
            for p in known.values()
        ], as_json=True)
        return
    for p in sorted(known.values(), key=lambda p: p.name):
        click.echo(f"{p.name:18} {p.platform!s:16} {p.compatible:28} {p.description}")


_plain_http_option = click.option(
    "--plain-http", is_flag=True, help="Talk to the registry over plain HTTP (a site registry without TLS); TLS otherwise.")
_require_signed_option = click.option(
    "--require-signed", is_flag=True, help="Refuse a bundle or overlay that carries no signed metadata (instead of a warning).")


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("target", metavar="REGISTRY/REPO[:TAG]")
@_plain_http_option
@_require_signed_option
@click.option("--mount-from", "mount_from", multiple=True, metavar="REPO",
              help="Another repository of the same registry that may hold the blobs (repeatable): the registry links "
                   "them from there, nothing is sent again.")
@click.option("--base", metavar="BUNDLE|REGISTRY/REPO:TAG",
              help="An earlier release of the bundle (same name and profile): push a chunk delta against it too, so that "
                   "mirrors and devices holding it fetch only the changed chunks of large blobs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@reports_errors
def push(bundle: Path, target: str, plain_http: bool, require_signed: bool, mount_from: tuple[str, ...], base: str | None,
         as_json: bool) -> None:
    """Push BUNDLE to a registry, with the signed metadata in its tuf/ folder.

    The bundle is verified first. Its blobs, manifests and top index keep their digests; only
    blobs the registry lacks are sent. The tag defaults to PROFILE-VERSION. Credentials come from
    the Docker config (`docker login`, DOCKER_CONFIG). A bundle with no signed metadata (not yet
    `sealift repo add`ed) is pushed with a warning, or refused with --require-signed. With --base,
    each large blob (16 MiB or more) that changed only in part also gets a chunk delta, listed
    under the bundle; the whole blob is always pushed too, for those without the base.

    \b
    Examples:
      sealift push out/vision-app-1.4.0-jetson-orin registry.example.com/vision-app   # tag jetson-orin-1.4.0
      sealift push out/vision-app-1.4.0-jetson-orin 10.20.0.5:5000/vision-app --plain-http --require-signed
      sealift push out/vision-app-1.4.0-jetson-orin registry.example.com/eu/vision-app --mount-from us/vision-app
      sealift push out/vision-app-1.4.0-jetson-orin registry.example.com/vision-app --base out/vision-app-1.3.0-jetson-orin
    """
    from bundler.publish import push as push_bundle

    result = _with_progress(as_json, functools.partial(push_bundle, bundle, target, plain_http=plain_http,
                                                       require_signed=require_signed, warn=_warn, mount_from=mount_from,
                                                       base=base))
    _print_transfer(result, as_json, "pushed")


@cli.command()
@click.argument("reference", metavar="REGISTRY/REPO:TAG|@DIGEST")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory to write the bundle into (an interrupted pull into it resumes).")
@_plain_http_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@reports_errors
def pull(reference: str, out: Path, plain_http: bool, as_json: bool) -> None:
    """Download a bundle and its signed metadata from a registry into an OCI layout directory.

    The result is verified like any bundle before the command succeeds.

    \b
    Examples:
      sealift pull registry.example.com/vision-app:jetson-orin-1.4.0 --out pulled/vision-app-1.4.0-jetson-orin
    """
    from bundler.publish import pull as pull_bundle

    result = _with_progress(as_json, functools.partial(pull_bundle, reference, out, plain_http=plain_http))
    _print_transfer(result, as_json, "pulled")


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, type=click.Path(path_type=Path),
              help="The medium: a new (or empty) directory, or a new FILE.tar.")
@click.option("--base", "bases", multiple=True, metavar="BUNDLE|REGISTRY/REPO:TAG",
              help="Make a delta: leave out the blobs this base bundle (same name and profile) already has, and carry "
                   "large blobs that changed in part as chunk deltas against it. Repeatable.")
@_plain_http_option
@_require_signed_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@reports_errors
def export(bundles: tuple[Path, ...], to: Path, bases: tuple[str, ...], plain_http: bool, require_signed: bool, as_json: bool) -> None:
    """Write BUNDLES (and site overlays) to removable media for a site that never connects.

    The medium holds the OCI layout, the signed metadata, SHA256SUMS and a README.txt for the
    site operator. With --base it is a delta holding only what the base version lacks (a large
    blob that changed in part, such as a retrained model, as its changed chunks); a device
    without that base refuses it before changing anything. A device takes the newest bundle for
    its profile and the newest overlay for its site (`sealift overlay build`), as one install; a
    medium holding only an overlay rotates the site's configuration and secrets. Check the medium
    with `sealift verify` before it travels.

    \b
    Examples:
      sealift export out/vision-app-1.4.0-jetson-orin out/vision-app-site-plant-7-3.0.0 --to /media/usb
      sealift export out/vision-app-1.4.0-jetson-orin --to /media/usb --base out/vision-app-1.3.0-jetson-orin
    """
    from bundler.export import export as export_medium

    report = _with_progress(as_json, functools.partial(export_medium, list(bundles), to, bases=bases, plain_http=plain_http,
                                                       require_signed=require_signed, warn=_warn))
    if as_json:
        emit({**report.to_json(), **report.moved.to_json()}, as_json=True)
        return
    for b in report.bundles:
        kind = f"delta on {b.base['version']}, {b.blobs_from_base} blobs left to the base" if b.base else "complete"
        kind += " (some as changed chunks)" if b.chunks else ""
        click.echo(f"exported {b.name} {b.version} ({b.profile}, {kind})  {b.top.digest}")
    for o in report.overlays:
        click.echo(f"exported {o.name} overlay {o.version} for site {o.site}  {o.top.digest}")
    click.echo(f"wrote {report.moved.blobs_sent} blobs ({_size(report.moved.bytes_sent)}) to {to}")


@cli.group()
def mirror() -> None:
    """Keep site registries (mirrors) supplied with bundles and their signed metadata.

    \b
    Examples:
      sealift mirror sync --from registry.example.com/vision-app --to 10.20.0.5:5000 --plain-http-to
    """


@mirror.command("sync")
@click.option("--from", "origin", required=True, metavar="REGISTRY[/REPO[:TAG]]",
              help="Where to copy from: a registry (every repository of bundles it lists), a repository, or one bundle.")
@click.option("--to", "target", required=True, metavar="REGISTRY[/REPO]",
              help="The mirror; repositories keep their names unless one is given.")
@click.option("--profile", "profiles", multiple=True, metavar="NAME", help="Copy only bundles for this profile (repeatable).")
@click.option("--site", "sites", multiple=True, metavar="SITE", help="Copy only overlays for this site (repeatable).")
@click.option("--plain-http", is_flag=True, help="Talk to both registries over plain HTTP.")
@click.option("--plain-http-from", is_flag=True, help="Talk to the source over plain HTTP.")
@click.option("--plain-http-to", is_flag=True, help="Talk to the mirror over plain HTTP.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@reports_errors
def mirror_sync(origin: str, target: str, profiles: tuple[str, ...], sites: tuple[str, ...], plain_http: bool,
                plain_http_from: bool, plain_http_to: bool, as_json: bool) -> None:
    """Copy what a site needs into its registry: the bundles (of --profile), the overlays (of --site) and the signed metadata.

    Only blobs the mirror lacks are sent, so an interrupted sync resumes where it stopped and a
    blob crosses each hop once. Chain syncs hop by hop (origin, DMZ mirror, OT mirror) where each
    network reaches only the next. A bundle's chunk deltas (`push --base`) travel with it, and a
    large blob the mirror can rebuild from a base it holds crosses the hop as its changed chunks.

    \b
    Examples:
      sealift mirror sync --from registry.example.com/vision-app --to 10.20.0.5:5000 --plain-http-to
      sealift mirror sync --from registry.example.com --to dmz.example.com --profile jetson-orin --site plant-7
    """
    from bundler.publish import mirror_sync as sync

    result = _with_progress(as_json, functools.partial(sync, origin, target, profiles=profiles, sites=sites,
                                                       plain_http_from=plain_http or plain_http_from,
                                                       plain_http_to=plain_http or plain_http_to, warn=_warn))
    _print_transfer(result, as_json, "synced")


def _with_progress(as_json: bool, work: Callable[..., T]) -> T:
    """Run ``work(progress=…)`` with a progress reporter for the terminal (none with --json)."""
    progress = for_terminal(quiet=as_json)
    try:
        return work(progress=progress)
    finally:
        progress.close()


def _print_transfer(result: Any, as_json: bool, verb: str) -> None:
    if as_json:
        emit(result.to_json(), as_json=True)
        return
    for b in result.bundles:
        target = b.get("profile") or f"site {b.get('site')}"
        click.echo(f"{verb} {b.get('name')} {b.get('version')} ({target})  {b['digest']}  to {result.destination}")
    moved = result.moved
    mounted = f", {moved.blobs_mounted} linked from another repository ({_size(moved.bytes_mounted)})" if moved.blobs_mounted else ""
    metadata = "taken" if verb == "pulled" else "published"
    if moved.blobs_rebuilt:
        mounted += f", {moved.blobs_rebuilt} rebuilt from chunk deltas ({_size(moved.bytes_rebuilt)})"
    click.echo(f"copied {moved.blobs_sent} blobs ({_size(moved.bytes_sent)}), {moved.blobs_present} already there "
               f"({_size(moved.bytes_present)}){mounted}; {len(result.metadata)} metadata files {metadata}")
    if result.skipped:
        click.echo(f"left alone {len(result.skipped)} tags that are not Sealift bundles: {', '.join(result.skipped[:5])}")
    for d in getattr(result, "deltas", []):
        click.echo(f"chunk delta on {d['base']}: {_size(d['bytes'])} stand for {d['blobs_rebuilt']} blobs ({_size(d['bytes_rebuilt'])})"
                   if d["digest"] else f"no chunk delta on {d['base']}: no large blob changed only in part")


def _print_table(info: BundleInfo) -> None:
    platform = "/".join(info.platform[k] for k in ("os", "architecture", "variant") if k in info.platform)
    rows = []
    for c in info.components:
        detail = c.detail
        if c.uncompressed_size is not None and c.uncompressed_size != c.size:
            detail = f"{detail}, zstd from {_size(c.uncompressed_size)}".lstrip(", ")
        rows.append((c.kind, c.name, _size(c.size), c.digest[7:19], detail))
    heading = [f"{info.name} {info.version} for {info.profile} ({platform}, compatible {info.compatible})",
               f"digest  {info.digest}", f"created {info.created}, {_size(info.size)} in {len(info.components)} components"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # the base package (a device) has no rich: plain columns
        click.echo("\n".join(heading))
        for row in rows:
            click.echo(f"{row[0]:10} {row[1]:20} {row[2]:>10}  {row[3]}  {row[4]}")
        return
    console = Console(width=max(Console().width, 100))
    console.print(f"[bold]{heading[0]}[/]\n" + "\n".join(heading[1:]), highlight=False)
    table = Table()
    for column in ("kind", "name", "size", "digest", "detail"):
        table.add_column(column, justify="right" if column == "size" else "left", no_wrap=column != "detail")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _add_groups() -> None:
    from bundler.cli_fleet import fleet, reports
    from bundler.cli_repo import repo
    from bundler.cli_rollout import rollout
    from bundler.cli_sites import devices, overlay

    for group in (repo, rollout, overlay, devices, fleet, reports):
        cli.add_command(group)


_add_groups()
add_completion(cli, "sealift")
add_login(cli, "sealift")


OFFICE_CONFIG = Path("/etc/sealift/sealift.yaml")


def main() -> None:
    """Entry point of the ``sealift`` command: its options from the command line, then from the
    configuration file (``/etc/sealift/sealift.yaml``, or the one ``SEALIFT_OFFICE_CONFIG`` names),
    e.g. ``push: {require_signed: true}`` so that a site's pipelines never push an unsigned bundle."""
    from updater.config import load_defaults
    from updater.errors import SealiftError
    from updater.exits import fail

    try:
        defaults = load_defaults(cli, default=OFFICE_CONFIG, variable="SEALIFT_OFFICE_CONFIG", environment=False,
                                 what="sealift configuration")
    except SealiftError as e:
        fail(e)
    cli(prog_name="sealift", default_map=defaults)
