"""``sealift``: build, inspect and verify update bundles. A thin shell over the bundler package."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bundler.policy import ALGORITHMS, ROLES, Policy, RolePolicy
from updater.errors import Refused
from updater.exits import reports_errors
from updater.progress import for_terminal

if TYPE_CHECKING:
    from updater.bundle import BundleInfo

__all__ = ["cli", "main"]

T = TypeVar("T")


_profiles_dir_option = click.option(
    "--profiles-dir", "profiles_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
    help="Another directory of profile YAML files (repeatable); its profiles replace built-in ones of the same name.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sealift")
def cli() -> None:
    """Build signed, reproducible update bundles for edge AI devices.

    A bundle is an OCI image layout for one hardware profile: the application's container images
    (by their original digests), its models and configs, and a descriptor the device's updater
    reads. Build with `sealift build`, look inside with `sealift inspect`, check with
    `sealift verify`, sign with `sealift repo`, and deliver with `sealift push` (a registry),
    `sealift mirror sync` (site mirrors) or `sealift export` (removable media).
    """


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
@reports_errors
def build(spec: Path, profiles: tuple[str, ...], out: Path, fmt: str, plain_http: bool, as_json: bool,
          profiles_dirs: tuple[Path, ...]) -> None:
    """Build one bundle per hardware profile from SPEC (a sealift.yaml).

    Bundles are named NAME-VERSION-PROFILE and are byte-identical for the same inputs and
    SOURCE_DATE_EPOCH (which defaults to the spec's last git commit time). Each is verified
    before it is moved into place; an existing bundle is kept if identical and refused otherwise.
    """
    from bundler.build import BuildOptions, build_bundles, select_profiles, source_date_epoch
    from bundler.spec import load_spec
    from updater.profiles import load_profiles, profile_search_path

    loaded = load_spec(spec)
    known = load_profiles(profile_search_path(loaded.directory, profiles_dirs))
    selected = select_profiles(loaded, known, profiles)
    options = BuildOptions(out=out, format="tar" if fmt == "tar" else "dir",
                           epoch=source_date_epoch(loaded.directory), plain_http=plain_http)
    built = _with_progress(as_json, functools.partial(build_bundles, loaded, selected, options))
    if as_json:
        click.echo(json.dumps([{"path": str(b.path), "unchanged": b.unchanged, **b.info.to_json()} for b in built], indent=2))
        return
    for b in built:
        state = "unchanged" if b.unchanged else "built"
        click.echo(f"{state:9} {b.path}  {b.info.digest}  {_size(b.info.size)}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what BUNDLE holds: identity, profile, and each component's size and digest.

    Every blob is checked on the way, so what is shown is what the device would get.
    """
    from updater.bundle import check_bundle

    report = check_bundle(bundle)
    if as_json:
        click.echo(json.dumps({**report.bundle.to_json(), "problems": list(report.problems)}, indent=2))
    else:
        _print_table(report.bundle)
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
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    failed = next((r.fault for r in results if r.fault is not None), None)
    if failed is not None:
        sys.exit(failed.exit_code)


def _print_checked(checked: Any) -> None:
    for problem in checked.problems:
        click.echo(f"FAILED {checked.path}: {problem}", err=True)
    if checked.problems:
        return
    if checked.medium is None:
        click.echo(f"ok {checked.path}  {checked.digest}")
        return
    for b in checked.medium.bundles:
        kind = f"delta on {b.base['version']}" if b.base else "complete"
        click.echo(f"ok {checked.path}  {b.name} {b.version} ({b.profile}, {kind})  {b.top.digest}")
    for o in checked.medium.overlays:
        click.echo(f"ok {checked.path}  {o.name} overlay {o.version} (site {o.site})  {o.top.digest}")


@cli.command("profiles")
@click.option("--spec", type=click.Path(path_type=Path, dir_okay=False), help="Also load profiles/ next to this spec.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_profiles_dir_option
@reports_errors
def profiles_cmd(spec: Path | None, as_json: bool, profiles_dirs: tuple[Path, ...]) -> None:
    """List the known hardware profiles."""
    from updater.profiles import load_profiles, profile_search_path

    known = load_profiles(profile_search_path(spec.parent if spec else None, profiles_dirs))
    if as_json:
        click.echo(json.dumps([
            {"name": p.name, "platform": str(p.platform), "compatible": p.compatible, "description": p.description,
             "file": str(p.source)} for p in known.values()
        ], indent=2))
        return
    for p in sorted(known.values(), key=lambda p: p.name):
        click.echo(f"{p.name:18} {p.platform!s:16} {p.compatible:28} {p.description}")


def _role_numbers(values: tuple[str, ...], option: str, kind: type[float] | type[int]) -> dict[str, float]:
    result: dict[str, float] = {}
    for value in values:
        role, sep, number = value.partition("=")
        try:
            if not sep or role not in ROLES:
                raise ValueError
            result[role] = kind(number)
        except ValueError:
            raise click.BadParameter(f"expected ROLE=NUMBER with ROLE one of {', '.join(ROLES)}, found {value!r}",
                                     param_hint=option) from None
    return result


@cli.group()
def repo() -> None:
    """The TUF repository that signs bundles.

    Public metadata lives in DIR/metadata/; private keys only in KEYDIR, encrypted with the
    passphrase in SEALIFT_KEY_PASSPHRASE (or typed at a prompt). Devices are provisioned with
    DIR/metadata/1.root.json.
    """


_keys_option = click.option("--keys", "keydir", required=True, type=click.Path(path_type=Path, file_okay=False),
                            help="The key directory (private keys, encrypted; never inside the repository).")


@repo.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@_keys_option
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="ed25519", show_default=True, help="Key type for new keys.")
@click.option("--role-keys", multiple=True, metavar="ROLE=N", help="Keys to create for a role (e.g. root=3). Default 1.")
@click.option("--threshold", multiple=True, metavar="ROLE=N", help="Signatures a role needs (e.g. root=2). Default 1.")
@click.option("--expiry", multiple=True, metavar="ROLE=DAYS",
              help="How long a role's metadata stays valid. Defaults: root 365, targets 90, snapshot 30, timestamp 30.")
@click.option("--hashed-bins", type=click.IntRange(0, 14), default=0, metavar="BITS",
              help="Spread targets over 2**BITS delegated bins (for many thousands of bundles).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def repo_init(directory: Path, keydir: Path, algorithm: str, role_keys: tuple[str, ...], threshold: tuple[str, ...],
              expiry: tuple[str, ...], hashed_bins: int, as_json: bool) -> None:
    """Create a TUF repository in DIRECTORY with new keys for root, targets, snapshot and timestamp."""
    from bundler.keys import KeyStore
    from bundler.repo import Repository

    counts = _role_numbers(role_keys, "--role-keys", int)
    thresholds = _role_numbers(threshold, "--threshold", int)
    days = _role_numbers(expiry, "--expiry", float)
    defaults = Policy().roles
    roles = {
        r: RolePolicy(keys=int(counts.get(r, max(defaults[r].keys, thresholds.get(r, 1)))), threshold=int(thresholds.get(r, 1)),
                      expiry_days=days.get(r, defaults[r].expiry_days))
        for r in ROLES
    }
    Repository(directory, KeyStore(keydir)).init(Policy(roles=roles, algorithm=algorithm), hashed_bins=hashed_bins)
    root = directory / "metadata" / "1.root.json"
    if as_json:
        click.echo(json.dumps({"repository": str(directory), "root": str(root), "keys": str(keydir)}))
    else:
        click.echo(f"created {directory}; provision devices with {root}")


@repo.command("add")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@_keys_option
@click.option("--role", metavar="NAME", help="Sign as this delegated role (a team's or a site's) instead of targets.")
@click.option("--force", is_flag=True, help="Publish even an older version than the newest, or replace a target.")
@click.option("--location", metavar="URL", help="Where devices can fetch the bundle (recorded in the target).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def repo_add(directory: Path, bundles: tuple[Path, ...], keydir: Path, role: str | None, force: bool, location: str | None,
             as_json: bool) -> None:
    """Sign BUNDLES as targets of the repository in DIRECTORY and write its metadata into each."""
    from bundler.keys import KeyStore
    from bundler.repo import Repository

    results = Repository(directory, KeyStore(keydir)).add(list(bundles), role=role, force=force, location=location)
    if as_json:
        click.echo(json.dumps([{"bundle": str(r.bundle), "target": r.target, "changed": r.changed} for r in results], indent=2))
        return
    for r in results:
        click.echo(f"{'added' if r.changed else 'unchanged':9} {r.target}  {r.bundle}")


@repo.command("delegate")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.argument("name")
@_keys_option
@click.option("--path", "paths", multiple=True, required=True, metavar="PATTERN",
              help="Targets the role may sign: NAME/PROFILE/VERSION patterns, '*' matching within one part "
                   "(e.g. 'vision-app/*/*'); repeatable.")
@click.option("--role-keys", "key_count", type=click.IntRange(1, 16), default=1, show_default=True, help="Keys to create.")
@click.option("--threshold", type=click.IntRange(1, 16), default=1, show_default=True, help="Signatures needed.")
@reports_errors
def repo_delegate(directory: Path, name: str, keydir: Path, paths: tuple[str, ...], key_count: int, threshold: int) -> None:
    """Create the delegated targets role NAME (a team or a site) with its own keys, limited to PATTERNs."""
    from bundler.keys import KeyStore
    from bundler.repo import Repository

    Repository(directory, KeyStore(keydir)).delegate(name, paths=paths, keys=key_count, threshold=threshold)
    click.echo(f"delegated {', '.join(paths)} to role {name}")


@repo.command("add-key")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.argument("role", type=click.Choice(ROLES))
@_keys_option
@click.option("--uri", help="securesystemslib signer URI of the private key (e.g. gcpkms:…, hsm:…, file2:PATH).")
@click.option("--public-key", "public_key", type=click.Path(path_type=Path, dir_okay=False), help="The key's public half, PEM.")
@click.option("--sigstore-identity", help="Instead of --uri and --public-key: sign keylessly in CI as this OIDC identity.")
@click.option("--sigstore-issuer", help="The OIDC issuer of --sigstore-identity.")
@reports_errors
def repo_add_key(directory: Path, role: str, keydir: Path, uri: str | None, public_key: Path | None,
                 sigstore_identity: str | None, sigstore_issuer: str | None) -> None:
    """Trust a key held elsewhere (KMS, HSM, file, Sigstore keyless) for ROLE, in a new root version."""
    from securesystemslib.signer import Key

    from bundler.keys import KeyStore, public_key_from_pem
    from bundler.repo import Repository

    key: Key
    if sigstore_identity and sigstore_issuer and not (uri or public_key):
        from securesystemslib.signer import SigstoreSigner

        uri, key = SigstoreSigner.import_(sigstore_identity, sigstore_issuer, ambient=True)
    elif uri and public_key and not (sigstore_identity or sigstore_issuer):
        key = public_key_from_pem(public_key)
    else:
        raise click.UsageError("give --uri with --public-key, or --sigstore-identity with --sigstore-issuer")
    Repository(directory, KeyStore(keydir)).add_key(role, key, uri)
    click.echo(f"{role}: trusts key {key.keyid[:16]} through {uri.split(':', 1)[0]}:")


@repo.command("refresh")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@_keys_option
@reports_errors
def repo_refresh(directory: Path, keydir: Path) -> None:
    """Re-sign snapshot and timestamp (and targets metadata past half its validity).

    Schedule it more often than the timestamp expires. Bundles carry the metadata they were
    added with: add them again to give them the fresh metadata.
    """
    from bundler.keys import KeyStore
    from bundler.repo import Repository

    Repository(directory, KeyStore(keydir)).refresh()
    click.echo(f"refreshed {directory}")


@repo.command("rotate")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.argument("role", type=click.Choice(ROLES))
@_keys_option
@click.option("--revoke", multiple=True, metavar="KEYID", help="Replace only this key (repeatable). Default: every key of ROLE.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def repo_rotate(directory: Path, role: str, keydir: Path, revoke: tuple[str, ...], as_json: bool) -> None:
    """Replace ROLE's keys with new ones in a new root version (for root too: devices walk the chain).

    Bundles signed afterwards carry the new root; add them again (`repo add`) to re-sign.
    """
    from bundler.keys import KeyStore
    from bundler.repo import Repository

    removed = Repository(directory, KeyStore(keydir)).rotate(role, revoke=list(revoke) or None)
    if as_json:
        click.echo(json.dumps({"role": role, "revoked": removed}))
    else:
        click.echo(f"{role}: replaced {len(removed)} key(s): {', '.join(k[:16] for k in removed)}")


_plain_http_option = click.option(
    "--plain-http", is_flag=True, help="Talk to the registry over plain HTTP (a site registry without TLS); TLS otherwise.")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("target", metavar="REGISTRY/REPO[:TAG]")
@_plain_http_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@reports_errors
def push(bundle: Path, target: str, plain_http: bool, as_json: bool) -> None:
    """Push BUNDLE to a registry, with the signed metadata in its tuf/ folder.

    The bundle is verified first. Its blobs, manifests and top index keep their digests; only
    blobs the registry lacks are sent. The tag defaults to PROFILE-VERSION. Credentials come from
    the Docker config (`docker login`, DOCKER_CONFIG).
    """
    from bundler.publish import push as push_bundle

    result = _with_progress(as_json, functools.partial(push_bundle, bundle, target, plain_http=plain_http))
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
    """
    from bundler.publish import pull as pull_bundle

    result = _with_progress(as_json, functools.partial(pull_bundle, reference, out, plain_http=plain_http))
    _print_transfer(result, as_json, "pulled")


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, type=click.Path(path_type=Path),
              help="The medium: a new (or empty) directory, or a new FILE.tar.")
@click.option("--base", "bases", multiple=True, metavar="BUNDLE|REGISTRY/REPO:TAG",
              help="Make a delta: leave out the blobs this base bundle (same name and profile) already has. Repeatable.")
@_plain_http_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@reports_errors
def export(bundles: tuple[Path, ...], to: Path, bases: tuple[str, ...], plain_http: bool, as_json: bool) -> None:
    """Write BUNDLES (and site overlays) to removable media for a site that never connects.

    The medium holds the OCI layout, the signed metadata, SHA256SUMS and a README.txt for the
    site operator. With --base it is a delta holding only what the base version lacks; a device
    without that base refuses it before changing anything. A device takes the newest bundle for
    its profile and the newest overlay for its site (`sealift overlay build`), as one install; a
    medium holding only an overlay rotates the site's configuration and secrets. Check the medium
    with `sealift verify` before it travels.
    """
    from bundler.export import export as export_medium

    report = _with_progress(as_json, functools.partial(export_medium, list(bundles), to, bases=bases, plain_http=plain_http))
    if as_json:
        click.echo(json.dumps({"ok": True, **report.to_json(), **report.moved.to_json()}, indent=2))
        return
    for b in report.bundles:
        kind = f"delta on {b.base['version']}, {b.blobs_from_base} blobs left to the base" if b.base else "complete"
        click.echo(f"exported {b.name} {b.version} ({b.profile}, {kind})  {b.top.digest}")
    for o in report.overlays:
        click.echo(f"exported {o.name} overlay {o.version} for site {o.site}  {o.top.digest}")
    click.echo(f"wrote {report.moved.blobs_sent} blobs ({_size(report.moved.bytes_sent)}) to {to}")


@cli.group()
def overlay() -> None:
    """Per-site overlays: a site's configuration values and its secrets, sealed to its devices."""


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
@reports_errors
def overlay_build(spec: Path, site: str, site_file: Path | None, inventory: Path, out: Path, as_json: bool) -> None:
    """Build SITE's overlay for the application SPEC describes.

    Secret values come from where the spec's `secrets` say (an environment variable or a file) and
    are sealed with HPKE to the site's enrolled devices; only ciphertext is written. Sign the
    overlay with `sealift repo add` and deliver it like a bundle. See docs/secrets.md.
    """
    from bundler.overlay import build_overlay
    from bundler.spec import load_spec

    path, info = build_overlay(load_spec(spec), site, inventory=inventory, out=out, site_file=site_file)
    if as_json:
        click.echo(json.dumps({"path": str(path), **info.to_json()}, indent=2))
        return
    click.echo(f"built {path}  {info.digest}  ({len(info.secrets)} secrets sealed to {len(info.recipients)} devices)")


_inventory_option = click.option(
    "--inventory", type=click.Path(path_type=Path, dir_okay=False), default=Path("devices.yaml"), show_default=True,
    help="The fleet inventory (public keys only), kept by the build machine.")


@cli.group()
def devices() -> None:
    """The enrolled devices that site secrets are sealed to."""


@devices.command("add")
@click.argument("record", type=click.Path(path_type=Path, dir_okay=False))
@_inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the device as JSON.")
@reports_errors
def devices_add(record: Path, inventory: Path, as_json: bool) -> None:
    """Enroll the device described by RECORD (what `sealift-updater enroll` printed on it)."""
    from bundler.devices import Inventory

    device = Inventory(inventory).add(record)
    click.echo(json.dumps(device.to_json()) if as_json else f"enrolled {device.device} at site {device.site} ({device.profile}, "
                                                            f"{device.kem})")


@devices.command("list")
@_inventory_option
@click.option("--site", help="Only this site's devices.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def devices_list(inventory: Path, site: str | None, as_json: bool) -> None:
    """List the enrolled devices (revoked ones too, marked)."""
    from bundler.devices import Inventory

    listed = [d for d in Inventory(inventory).devices() if site is None or d.site == site]
    if as_json:
        click.echo(json.dumps([d.to_json() for d in listed], indent=2))
        return
    for d in listed:
        state = f"revoked {d.revoked}" if d.revoked else f"enrolled {d.enrolled}"
        click.echo(f"{d.device}  {d.site:16}  {d.profile:18}  {d.kem:16}  {state}")


@devices.command("revoke")
@click.argument("device")
@_inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the device as JSON.")
@reports_errors
def devices_revoke(device: str, inventory: Path, as_json: bool) -> None:
    """Revoke DEVICE: it is left out of every secret sealed from now on, so it can read nothing new.

    What it could already read stays readable to it: rotate the site's secrets (build and deliver a
    new overlay) after revoking a device that was lost or stolen.
    """
    from bundler.devices import Inventory

    revoked = Inventory(inventory).revoke(device)
    click.echo(json.dumps(revoked.to_json()) if as_json else f"revoked {revoked.device} (site {revoked.site}) on {revoked.revoked}")


@cli.group()
def mirror() -> None:
    """Keep site registries (mirrors) supplied with bundles and their signed metadata."""


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
    network reaches only the next.
    """
    from bundler.publish import mirror_sync as sync

    result = _with_progress(as_json, functools.partial(sync, origin, target, profiles=profiles, sites=sites,
                                                       plain_http_from=plain_http or plain_http_from,
                                                       plain_http_to=plain_http or plain_http_to))
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
        click.echo(json.dumps({"ok": True, **result.to_json()}, indent=2))
        return
    for b in result.bundles:
        target = b.get("profile") or f"site {b.get('site')}"
        click.echo(f"{verb} {b.get('name')} {b.get('version')} ({target})  {b['digest']}  to {result.destination}")
    moved = result.moved
    click.echo(f"copied {moved.blobs_sent} blobs ({_size(moved.bytes_sent)}), {moved.blobs_present} already there "
               f"({_size(moved.bytes_present)}); {len(result.metadata)} metadata files published")
    if result.skipped:
        click.echo(f"left alone {len(result.skipped)} tags that are not Sealift bundles: {', '.join(result.skipped[:5])}")


def _print_table(info: BundleInfo) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    platform = "/".join(info.platform[k] for k in ("os", "architecture", "variant") if k in info.platform)
    console.print(f"[bold]{info.name} {info.version}[/] for [bold]{info.profile}[/] ({platform}, compatible {info.compatible})")
    console.print(f"digest  {info.digest}")
    console.print(f"created {info.created}, {_size(info.size)} in {len(info.components)} components")
    table = Table()
    for column in ("kind", "name", "size", "digest", "detail"):
        table.add_column(column, justify="right" if column == "size" else "left", no_wrap=column != "detail")
    for c in info.components:
        detail = c.detail
        if c.uncompressed_size is not None and c.uncompressed_size != c.size:
            detail = f"{detail}, zstd from {_size(c.uncompressed_size)}".lstrip(", ")
        table.add_row(c.kind, c.name, _size(c.size), c.digest[7:19], detail)
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def main() -> None:
    """Entry point of the ``sealift`` command."""
    cli(prog_name="sealift")
