"""``sealift repo``: the TUF repository that signs bundles and overlays (see :mod:`bundler.repo`)."""

from __future__ import annotations

from pathlib import Path

import click

from bundler.policy import ALGORITHMS, ROLES, Policy, RolePolicy
from updater.exits import emit, reports_errors

__all__ = ["repo"]


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


@click.group()
def repo() -> None:
    """The TUF repository that signs bundles.

    Public metadata lives in DIR/metadata/; private keys only in KEYDIR, encrypted with the
    passphrase in SEALIFT_KEY_PASSPHRASE (or typed at a prompt). Devices are provisioned with
    DIR/metadata/1.root.json.

    \b
    Examples:
      sealift repo init repo/ --keys keys/
      sealift repo add repo/ out/vision-app-1.4.0-jetson-orin --keys keys/
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
    """Create a TUF repository in DIRECTORY with new keys for root, targets, snapshot and timestamp.

    \b
    Examples:
      sealift repo init repo/ --keys keys/
      sealift repo init repo/ --keys keys/ --role-keys root=3 --threshold root=2 --expiry timestamp=7
    """
    from bundler.keys import Keyring
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
    Repository(directory, Keyring(keydir)).init(Policy(roles=roles, algorithm=algorithm), hashed_bins=hashed_bins)
    root = directory / "metadata" / "1.root.json"
    if as_json:
        emit({"repository": str(directory), "root": str(root), "keys": str(keydir)}, as_json=True)
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
    """Sign BUNDLES as targets of the repository in DIRECTORY and write its metadata into each.

    \b
    Examples:
      sealift repo add repo/ out/vision-app-1.4.0-jetson-orin out/vision-app-1.4.0-x86_64-cpu --keys keys/
      sealift repo add repo/ out/vision-app-1.4.0-jetson-orin --keys team-keys/ --role vision-team
    """
    from bundler.keys import Keyring
    from bundler.repo import Repository

    results = Repository(directory, Keyring(keydir)).add(list(bundles), role=role, force=force, location=location)
    if as_json:
        emit([{"bundle": str(r.bundle), "target": r.target, "changed": r.changed} for r in results], as_json=True)
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
@click.option("--json", "as_json", is_flag=True, help="Print the result in the JSON envelope.")
@reports_errors
def repo_delegate(directory: Path, name: str, keydir: Path, paths: tuple[str, ...], key_count: int, threshold: int,
                  as_json: bool) -> None:
    """Create the delegated targets role NAME (a team or a site) with its own keys, limited to PATTERNs.

    \b
    Examples:
      sealift repo delegate repo/ vision-team --keys keys/ --path 'vision-app/*/*'
    """
    from bundler.keys import Keyring
    from bundler.repo import Repository

    Repository(directory, Keyring(keydir)).delegate(name, paths=paths, keys=key_count, threshold=threshold)
    emit({"role": name, "paths": list(paths), "keys": key_count, "threshold": threshold}, as_json=as_json,
         text=f"delegated {', '.join(paths)} to role {name}")


@repo.command("add-key")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.argument("role", type=click.Choice(ROLES))
@_keys_option
@click.option("--uri", help="securesystemslib signer URI of the private key (e.g. gcpkms:…, hsm:…, file2:PATH).")
@click.option("--public-key", "public_key", type=click.Path(path_type=Path, dir_okay=False), help="The key's public half, PEM.")
@click.option("--sigstore-identity", help="Instead of --uri and --public-key: sign keylessly in CI as this OIDC identity.")
@click.option("--sigstore-issuer", help="The OIDC issuer of --sigstore-identity.")
@click.option("--json", "as_json", is_flag=True, help="Print the result in the JSON envelope.")
@reports_errors
def repo_add_key(directory: Path, role: str, keydir: Path, uri: str | None, public_key: Path | None,
                 sigstore_identity: str | None, sigstore_issuer: str | None, as_json: bool) -> None:
    """Trust a key held elsewhere (KMS, HSM, file, Sigstore keyless) for ROLE, in a new root version.

    \b
    Examples:
      sealift repo add-key repo/ targets --keys keys/ --uri hsm: --public-key targets-hsm.pem
      sealift repo add-key repo/ targets --keys keys/ --sigstore-identity sealift-ci@acme.iam.gserviceaccount.com \\
          --sigstore-issuer https://accounts.google.com
    """
    from securesystemslib.signer import Key

    from bundler.keys import Keyring, public_key_from_pem
    from bundler.repo import Repository

    key: Key
    if sigstore_identity and sigstore_issuer and not (uri or public_key):
        from securesystemslib.signer import SigstoreSigner

        uri, key = SigstoreSigner.import_(sigstore_identity, sigstore_issuer, ambient=True)
    elif uri and public_key and not (sigstore_identity or sigstore_issuer):
        key = public_key_from_pem(public_key)
    else:
        raise click.UsageError("give --uri with --public-key, or --sigstore-identity with --sigstore-issuer")
    Repository(directory, Keyring(keydir)).add_key(role, key, uri)
    emit({"role": role, "keyid": key.keyid, "scheme": uri.split(":", 1)[0]}, as_json=as_json,
         text=f"{role}: trusts key {key.keyid[:16]} through {uri.split(':', 1)[0]}")


@repo.command("refresh")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@_keys_option
@click.option("--json", "as_json", is_flag=True, help="Print the result in the JSON envelope.")
@reports_errors
def repo_refresh(directory: Path, keydir: Path, as_json: bool) -> None:
    """Re-sign snapshot and timestamp (and targets metadata past half its validity).

    Schedule it more often than the timestamp expires. Bundles carry the metadata they were
    added with: add them again to give them the fresh metadata.

    \b
    Examples:
      sealift repo refresh repo/ --keys keys/       # e.g. daily, from cron
    """
    from bundler.keys import Keyring
    from bundler.repo import Repository

    Repository(directory, Keyring(keydir)).refresh()
    emit({"repository": str(directory)}, as_json=as_json, text=f"refreshed {directory}")


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

    \b
    Examples:
      sealift repo rotate repo/ timestamp --keys keys/
    """
    from bundler.keys import Keyring
    from bundler.repo import Repository

    removed = Repository(directory, Keyring(keydir)).rotate(role, revoke=list(revoke) or None)
    if as_json:
        emit({"role": role, "revoked": removed}, as_json=True)
    else:
        click.echo(f"{role}: replaced {len(removed)} key(s): {', '.join(k[:16] for k in removed)}")
