"""The device's one TUF client: python-tuf's ngclient over a copy of the device's trusted metadata.

Signed metadata reaches a device three ways, and all three go through :class:`TufClient`: in a
bundle's or a medium's ``tuf/`` folder (:class:`LayoutMetadata`), as ``tuf.*`` artifacts in a site
registry (:class:`RegistryMetadata`), and, when what a bundle carries is older than what the device
already trusts, from the device's own trusted copy (:class:`TrustedMetadata`). A verification
(1) checks the chain of root versions has no gap, (2) runs ngclient's refresh (TUF 5.3 to 5.6: root,
timestamp, snapshot, targets, each signed by its threshold of keys, unexpired and never older than
what the device trusts), (3) looks a target up by the one name it is signed as
(:func:`target_name`), and (4) holds the index bytes against it.

Faults are split as python-tuf splits them: metadata that fails a check is Refused (an attack, or
metadata a repository should never have served), a source that cannot deliver is a
DeliveryError (never reported as an attack), and trusted metadata the device cannot write is a
DeviceFault.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import quote

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import KEY_FOR_TYPE_AND_SCHEME, Signature, SigstoreKey
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from updater.artifact import Kind, kind
from updater.errors import DeliveryError, DeviceFault, Refused, SealiftError
from updater.layout import LayoutReader
from updater.oci import ANNOTATION, MAX_METADATA_BYTES, json_object, parse_json
from updater.rollout import ROLE, plan_target

if TYPE_CHECKING:
    from updater.registry import RegistryClient

__all__ = [
    "LayoutMetadata",
    "MetadataSource",
    "RegistryMetadata",
    "TrustedMetadata",
    "TufClient",
    "carried_expiries",
    "claimed_target",
    "metadata_expiries",
    "target_name",
]

_URL = "sealift-metadata:/"
_ROOT_FILE = re.compile(r"([1-9][0-9]{0,9})\.root\.json")
_NOT_TARGETS = frozenset({"root.json", "timestamp.json", "snapshot.json"})
_PROBE = "0.0.0-probe"  # a version no release takes: looked up only to load the roles a name under a prefix walks
T = TypeVar("T")
_REASONS: dict[type[Exception], str] = {  # ngclient's exception classes, in the words of an operator
    tuf_errors.ExpiredMetadataError: "expired metadata",
    tuf_errors.EqualVersionNumberError: "metadata replayed with an unchanged version",
    tuf_errors.BadVersionNumberError: "metadata older than the device trusts, or from another moment than the snapshot "
                                      "names (rollback or mix-and-match)",
    tuf_errors.UnsignedMetadataError: "metadata not signed by enough trusted keys",
    tuf_errors.LengthOrHashMismatchError: "metadata that does not match what the snapshot or timestamp signed",
    tuf_errors.DownloadLengthMismatchError: "a metadata file larger than allowed",
    tuf_errors.DownloadHTTPError: "metadata missing",
}


class _OfflineSigstoreKey(SigstoreKey):
    """A keyless (Sigstore) key as a device sees it: its signatures need Sigstore's online trust
    root, so offline they never count, and the role's ordinary keys must meet its threshold."""

    def verify_signature(self, signature: Signature, data: bytes) -> None:
        raise UnverifiedSignatureError(f"key {self.keyid[:16]}: keyless signatures are not verified offline")


KEY_FOR_TYPE_AND_SCHEME[("sigstore-oidc", "Fulcio")] = _OfflineSigstoreKey


def target_name(*, name: str, version: str, profile: str | None = None, site: str | None = None) -> str:
    """The name a bundle (``NAME/PROFILE/VERSION``) or a site overlay (``NAME/overlays/SITE/VERSION``)
    is signed as: the repository signs, and the device looks up, exactly this."""
    if (profile is None) == (site is None):
        raise ValueError("a target is a bundle for a profile or an overlay for a site")
    return f"{name}/overlays/{site}/{version}" if site is not None else f"{name}/{profile}/{version}"


def claimed_target(index: bytes, where: str) -> str:
    """The target a top index (its bytes) claims to be, from its annotations; TUF decides whether it is."""
    try:
        parsed = json_object(index, where)
        a = parsed["annotations"]
        if kind(parsed.get("artifactType")) is Kind.OVERLAY:
            return target_name(name=a[ANNOTATION.NAME], site=a[ANNOTATION.SITE], version=a[ANNOTATION.VERSION])
        return target_name(name=a[ANNOTATION.NAME], profile=a[ANNOTATION.PROFILE], version=a[ANNOTATION.VERSION])
    except (SealiftError, KeyError, TypeError, AttributeError) as e:
        raise Refused(f"{where}: no readable bundle index to look up in the signed targets") from e


class MetadataSource(Protocol):
    """Where signed metadata files come from. ``what`` names it in messages."""

    what: str
    may_be_older: bool  # whether its metadata may be older than the device's, which then decides
    missing: type[SealiftError]  # what a file it lacks is: an artifact without its metadata, or metadata not (yet) published

    def names(self) -> set[str] | None:
        """The files it holds, when it can tell (a folder can, a registry is asked file by file)."""
        ...

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name``, None when the source has no such file; DeliveryError when it cannot deliver."""
        ...


class LayoutMetadata:
    """The ``tuf/`` folder of a bundle or medium: the metadata of the moment it was signed, which may be
    older than what the device has since come to trust (then the device's own metadata decides)."""

    may_be_older = True
    missing: type[SealiftError] = Refused  # a bundle that lacks part of its metadata is a bad artifact

    def __init__(self, reader: LayoutReader) -> None:
        self.reader = reader
        self.what = reader.location
        self._names = reader.metadata_names()

    def names(self) -> set[str]:
        return self._names

    def read(self, name: str) -> bytes | None:
        if name not in self._names:
            return None
        with self.reader.open_metadata(name) as stream:
            return stream.read(MAX_METADATA_BYTES + 1)


class RegistryMetadata:
    """The ``tuf.*`` artifacts of a registry repository; keeps what it served, for the bundle it goes with.
    A mirror serves its newest metadata: older than what the device trusts is refused (a freeze)."""

    may_be_older = False
    missing: type[SealiftError] = DeliveryError  # not published (yet: a mirror being synced publishes bundles first)

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.what = f"site registry {client.ref.name}"
        self.fetched: dict[str, bytes] = {}

    def names(self) -> None:
        return None

    def read(self, name: str) -> bytes | None:
        if name in self.fetched:
            return self.fetched[name]
        from updater.registry_metadata import read_metadata  # the registry client: loaded by a poll, not by an offline install

        data = read_metadata(self.client, name, limit=MAX_METADATA_BYTES)
        if data is not None:
            self.fetched[name] = data
        return data


class TrustedMetadata:
    """The device's own trusted metadata, served back (and no newer root), so a refresh changes nothing
    and a target is looked up in what the device already trusts."""

    may_be_older = False
    missing: type[SealiftError] = DeviceFault  # the device's own trusted metadata is incomplete

    def __init__(self, metadata_dir: Path) -> None:
        self.metadata_dir = metadata_dir
        self.what = "the device's trusted metadata"

    def names(self) -> None:
        return None

    def read(self, name: str) -> bytes | None:
        role = name.split(".", 1)[1] if name.split(".", 1)[0].isdigit() else name
        path = self.metadata_dir / role
        if role == "root.json" or "/" in role or not path.is_file():
            return None
        try:
            return path.read_bytes()
        except OSError as e:
            raise DeviceFault(f"{path}: cannot read the trusted metadata ({e.strerror})") from e


class _Fetcher(FetcherInterface):
    """Hands ngclient the files of a source; a source's outage travels as the cause of its DownloadError."""

    def __init__(self, source: MetadataSource) -> None:
        self.source = source

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(_URL)
        try:
            data = self.source.read(name)
        except (DeliveryError, DeviceFault) as e:  # kept as the cause: an outage or the device's own fault, not an attack
            raise tuf_errors.DownloadError(e.diagnostics()) from e
        if data is None:  # like an HTTP 404: for a root, "no newer version"
            raise tuf_errors.DownloadHTTPError(f"{name} is not in {self.source.what}", 404)
        return iter((data,))


class TufClient:
    """One verification against ``metadata_dir``, a candidate copy of the device's trusted metadata
    (see :meth:`updater.trust.TrustedState.candidate`): the copy advances as ngclient verifies, and
    becomes the device's only if the caller commits it."""

    def __init__(self, metadata_dir: Path, source: MetadataSource) -> None:
        self.metadata_dir = metadata_dir
        self.source = source
        self.notes: list[str] = []  # what an operator should hear although the verification passes
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """(1) the root chain, (2) ngclient's refresh; a source older than the device's metadata gives way to it."""
        names = self.source.names()
        if names is not None and not names:
            raise Refused(f"{self.source.what}: carries no signed metadata (tuf/); sign it with `sealift repo add`")
        if names is not None:
            self._check_root_chain(names)
        if self.source.may_be_older and (older := self._older_than_trusted()) is not None:
            # the bundle carries older metadata than the device trusts: the newer, trusted metadata decides
            self.notes.append(f"{self.source.what} carries timestamp version {older[0]}, older than the device's "
                              f"{older[1]}; checked against the device's newer metadata instead")
            self.source = TrustedMetadata(self.metadata_dir)
        self._updater = self._guarded(lambda: Updater(str(self.metadata_dir), _URL, fetcher=_Fetcher(self.source),
                                                      config=UpdaterConfig(), bootstrap=None))
        self._guarded(self._updater.refresh)
        # the rollout plans' role is loaded with every refresh (a walk to a name only it may sign): the
        # device's own copy then stays as new as its snapshot, and a halt is read from it offline later
        updater = self._updater
        if self._delegates_rollout():
            self._guarded(lambda: updater.get_targetinfo(plan_target("sealift", "0.0.0")))

    def _delegates_rollout(self) -> bool:
        """Whether the (just verified) top-level targets delegates to the rollout role."""
        try:
            delegations = parse_json((self.metadata_dir / "targets.json").read_bytes(), "targets")["signed"].get("delegations")
        except (OSError, SealiftError, KeyError, TypeError, AttributeError):
            return False
        roles = delegations.get("roles") if isinstance(delegations, dict) else None
        return isinstance(roles, list) and any(isinstance(r, dict) and r.get("name") == ROLE for r in roles)

    def target(self, name: str) -> TargetFile | None:
        """(3) ``name`` as the refreshed metadata signs it (delegated roles walked as needed), or None."""
        updater = self._updater
        assert updater is not None, "refresh first"
        return self._guarded(lambda: updater.get_targetinfo(name))

    def role_target(self, role: str, name: str) -> TargetFile | None:
        """``name`` as the delegated ``role`` itself signs it, from the role's metadata this refresh verified
        (the rollout role's: :meth:`refresh` loads it); None when the role does not sign it."""
        assert self._updater is not None, "refresh first"
        path = self.metadata_dir / f"{quote(role, safe='')}.json"
        try:
            md = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, DeserializationError) as e:
            raise DeviceFault(f"{path}: cannot read the verified metadata of role {role} ({e})") from e
        if not isinstance(md.signed, Targets):
            raise DeviceFault(f"{path}: holds {md.signed.type} metadata, not role {role}'s targets")
        return md.signed.targets.get(name)

    def signed_under(self, prefix: str, keep: Callable[[str], bool] = lambda _: True) -> dict[str, TargetFile]:
        """Every target named ``PREFIX…`` (``NAME/PROFILE/``, ``NAME/overlays/SITE/``) the refreshed metadata
        signs (those ``keep`` keeps). A lookup of a name under ``prefix`` first has ngclient load and verify each delegated role such
        a name may be delegated to; the verified roles then propose names, and each is looked up again through
        ngclient's walk, so a role that may not sign a name never adds it. Hashed bins are the exception:
        a name picks its bin by its hash, and listing them all would fetch every bin (callers add the
        names they learn elsewhere, each checked by :meth:`target`)."""
        updater = self._updater
        assert updater is not None, "refresh first"
        self._guarded(lambda: updater.get_targetinfo(f"{prefix}{_PROBE}"))
        found: dict[str, TargetFile] = {}
        for path in sorted(self.metadata_dir.glob("*.json")):
            if path.name in _NOT_TARGETS or _ROOT_FILE.fullmatch(path.name):
                continue
            try:
                signed = Metadata.from_bytes(path.read_bytes()).signed
            except (OSError, DeserializationError):
                continue  # not one this refresh verified; a role it did verify was readable
            if not isinstance(signed, Targets):
                continue
            for name, proposed in signed.targets.items():
                if name.startswith(prefix) and name not in found and keep(name) and (target := self.target(name)) == proposed:
                    found[name] = target
        return found

    def check(self, name: str, index: bytes) -> None:
        """(4) ``index`` is, byte for byte, what the repository signs as ``name``; Refused otherwise."""
        if why := self.doubts(name, index):
            raise Refused(f"{self.source.what}: {why}")

    def doubts(self, name: str, index: bytes) -> str | None:
        """Why ``index`` is not what the repository signs as ``name`` (None when it is). Metadata that
        fails verification on the way (a delegated role) raises, as in :meth:`refresh`."""
        target = self.target(name)
        if target is None:
            return f"{name} is not a target signed by the repository"
        try:
            target.verify_length_and_hashes(index)
        except tuf_errors.LengthOrHashMismatchError as e:
            return f"the index {_sha256(index)} is not the one signed as {name} ({e})"
        return None

    def _guarded(self, step: Callable[[], T]) -> T:
        try:
            return step()
        except tuf_errors.DownloadError as e:
            if isinstance(e.__cause__, DeliveryError | DeviceFault):
                raise e.__cause__ from None  # an outage, or the device's own fault: not an attack
            if isinstance(e, tuf_errors.DownloadHTTPError) and e.status_code == 404:
                raise self.source.missing(f"{self.source.what}: signed metadata is missing ({e})") from e
            raise Refused(f"{self.source.what}: signed metadata refused: {_reason(e)} ({e})") from e
        except tuf_errors.RepositoryError as e:
            raise Refused(f"{self.source.what}: signed metadata refused: {_reason(e)} ({e})") from e
        except OSError as e:
            raise DeviceFault(f"{self.metadata_dir}: cannot keep the trusted metadata ({e.strerror})") from e

    def _check_root_chain(self, names: set[str]) -> None:
        """Every root version after the trusted one must be there: a device walks them one by one."""
        trusted = int(Path(os.readlink(self.metadata_dir / "root.json")).name.split(".")[0])
        carried = {int(m.group(1)) for n in names if (m := _ROOT_FILE.fullmatch(n))}  # N.root.json, not N.x.root.json
        newer = sorted(v for v in carried if v > trusted)
        if not newer or len(newer) == newer[-1] - trusted:
            return
        missing = trusted + 1
        while missing in carried:  # at most len(newer) steps: there is a gap below newer[-1]
            missing += 1
        raise Refused(f"{self.source.what}: the root chain has a gap: the device trusts root version {trusted}, "
                      f"the bundle carries up to {newer[-1]} but not {missing}")

    def _older_than_trusted(self) -> tuple[int, int] | None:
        """(the source's, the device's) timestamp versions when the source's is older (read unverified: it
        only picks which metadata to verify, and either is verified in full); None when it is not."""
        trusted = _version(self.metadata_dir / "timestamp.json")
        if trusted is None:
            return None
        try:
            carried = self.source.read("timestamp.json")
        except DeliveryError:
            return None  # the refresh meets the same outage and says so
        if carried is None or _version_of(carried) >= trusted:
            return None
        return _version_of(carried), trusted


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _version(path: Path) -> int | None:
    try:
        return _version_of(path.read_bytes())
    except FileNotFoundError:
        return None


def _version_of(data: bytes) -> int:
    try:
        version = parse_json(data, "metadata")["signed"]["version"]
    except (Refused, KeyError, TypeError):
        return -1
    return version if isinstance(version, int) else -1


def _reason(error: Exception) -> str:
    reason = next((text for kind, text in _REASONS.items() if isinstance(error, kind)), "metadata that fails verification")
    if isinstance(error, tuf_errors.ExpiredMetadataError):  # not an attack the site can fix: the office re-signs
        reason += (" (at the office: `sealift repo refresh`, `sealift repo add` the release again for the fresh metadata, "
                   "then push, mirror or export it again)")
    return reason


def carried_expiries(reader: LayoutReader) -> dict[str, str]:
    """When the newest signed metadata of each top-level role an artifact carries in its ``tuf/``
    folder expires, as the files say (not verified: for people to read; a device verifies)."""

    def read(name: str) -> bytes:
        with reader.open_metadata(name) as stream:
            return stream.read(MAX_METADATA_BYTES + 1)

    return metadata_expiries(reader.metadata_names(), read)


def metadata_expiries(names: set[str], read: Callable[[str], bytes]) -> dict[str, str]:
    """When the newest of each top-level role's metadata files among ``names`` expires (unverified)."""
    found = {}
    for role in ("root", "targets", "snapshot", "timestamp"):
        versions = [(int(n.split(".")[0]), n) for n in names if re.fullmatch(rf"[1-9][0-9]{{0,9}}\.{role}\.json", n)]
        name = max(versions)[1] if versions else f"{role}.json" if f"{role}.json" in names else None
        if name is None:
            continue
        try:
            expires = parse_json(read(name), name)["signed"]["expires"]
        except (SealiftError, OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(expires, str):
            found[role] = expires
    return found
