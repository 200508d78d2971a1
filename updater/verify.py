"""The one place the device decides whether a bundle may be installed.

(1) TUF, through python-tuf's ngclient, offline: the bundle's ``tuf/`` metadata is verified
against the device's trusted root and metadata, and the bundle's top index must be the signed
target ``NAME/PROFILE/VERSION`` byte for byte; (2) every blob's digest and size; (3) the bundle
was built for this device's profile and compatible string. Only then does the device's trusted
metadata advance.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import KEY_FOR_TYPE_AND_SCHEME, Signature, SigstoreKey
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from updater.bundle import BundleInfo, verify_bundle
from updater.errors import BundleError, DeviceFault, TrustError, UpdaterError
from updater.fetcher import BUNDLE_URL, BundleFetcher, TrustedFetcher
from updater.identity import DeviceIdentity
from updater.layout import LayoutReader, open_layout
from updater.oci import ANNOTATION, MAX_JSON_BYTES, MEDIA
from updater.overlay import OverlayInfo, check_overlay, overlay_target
from updater.profiles import Profile
from updater.sealed import Identity, open_sealed
from updater.trust import TrustStore
from updater.versions import fits

__all__ = ["check_signed_target", "signed_name", "tuf_fault", "verify_for_device", "verify_overlay"]

class _OfflineSigstoreKey(SigstoreKey):
    """A keyless (Sigstore) key as a device sees it: its signatures need Sigstore's online trust
    root, so offline they never count, and the role's ordinary keys must meet its threshold."""

    def verify_signature(self, signature: Signature, data: bytes) -> None:
        raise UnverifiedSignatureError(f"key {self.keyid[:16]}: keyless signatures are not verified offline")


KEY_FOR_TYPE_AND_SCHEME[("sigstore-oidc", "Fulcio")] = _OfflineSigstoreKey

_TUF_FAULTS: dict[type[Exception], str] = {
    tuf_errors.ExpiredMetadataError: "expired metadata",
    tuf_errors.EqualVersionNumberError: "metadata replayed with an unchanged version",
    tuf_errors.BadVersionNumberError: "metadata older than the device already trusts (rollback)",
    tuf_errors.UnsignedMetadataError: "metadata not signed by enough trusted keys",
    tuf_errors.LengthOrHashMismatchError: "metadata that does not match what the snapshot or timestamp signed",
    tuf_errors.DownloadLengthMismatchError: "a metadata file larger than allowed",
    tuf_errors.DownloadHTTPError: "metadata missing from the bundle",
}


def verify_for_device(path: Path, *, trust: TrustStore, profile: Profile | None) -> BundleInfo:
    """Check ``path`` completely; raise TrustError or BundleError naming the first fault found."""
    with trust.candidate() as metadata_dir, open_layout(path) as reader:
        # (1) TUF: the signed target for this bundle, and the index bytes it names
        name, index = _claimed_target(reader)
        target = _signed_target(path, reader, metadata_dir, name)
        _check_target(path, name, target, index)
        # (2) every blob (of the very index TUF vouched for), (3) the hardware, (4) never an older release
        info = verify_bundle(path)
        signed_digest = f"sha256:{hashlib.sha256(index).hexdigest()}"
        if info.digest != signed_digest:
            raise TrustError(f"{path}: changed while it was verified (index {info.digest}, signed {signed_digest})")
        _check_profile(path, info, profile)
        trust.check_version(info.name, info.profile, info.version)
        trust.commit(metadata_dir, release=(info.name, info.profile, info.version))
    return info


def signed_name(path: Path, reader: LayoutReader, metadata_dir: Path) -> str:
    """The target name the layout's index is signed as (TUF against ``metadata_dir``, byte for byte)."""
    name, index = _claimed_target(reader)
    _check_target(path, name, _signed_target(path, reader, metadata_dir, name), index)
    return name


def check_signed_target(reader: LayoutReader, digest: str, *, trust: TrustStore) -> None:
    """Check that the index ``digest`` in ``reader`` (a medium) is a target signed by the repository
    whose metadata the medium carries, against ``trust``; the trusted state does not change."""
    with trust.candidate() as metadata_dir:
        name, index = _claimed_target(reader, digest)
        target = _signed_target(Path(reader.location), reader, metadata_dir, name)
        _check_target(Path(reader.location), name, target, index)


def tuf_fault(error: Exception) -> str:
    if isinstance(error, tuf_errors.BadVersionNumberError) and str(error).startswith("Expected"):
        # ngclient's words when a file's version is not the one the snapshot (or timestamp) names
        return "metadata from another moment than the snapshot names (mix-and-match)"
    return next((text for kind, text in _TUF_FAULTS.items() if isinstance(error, kind)), "metadata that fails verification")


def _claimed_target(reader: LayoutReader, digest: str | None = None) -> tuple[str, bytes]:
    """The target name the bundle (or the index ``digest``) claims to be, and its index bytes (checked against TUF next)."""
    try:
        digest = digest or json.loads(reader.read_small("index.json"))["manifests"][0]["digest"]
        with reader.open_blob(digest) as stream:
            index = stream.read(MAX_JSON_BYTES + 1)
        parsed = json.loads(index)
        annotations = parsed["annotations"]
        if parsed.get("artifactType") == MEDIA.OVERLAY:
            name = overlay_target(annotations[ANNOTATION.NAME], annotations[ANNOTATION.SITE], annotations[ANNOTATION.VERSION])
        else:
            name = f"{annotations[ANNOTATION.NAME]}/{annotations[ANNOTATION.PROFILE]}/{annotations[ANNOTATION.VERSION]}"
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
        raise BundleError(f"{reader.location}: no readable bundle index to look up in the signed targets") from e
    return name, index


def _signed_target(path: Path, reader: LayoutReader, metadata_dir: Path, name: str) -> TargetFile:
    names = reader.metadata_names()
    if not names:
        raise TrustError(f"{path}: carries no signed metadata (tuf/); sign it with `sealift repo add`")
    _check_root_chain(path, names, metadata_dir)
    updater = Updater(str(metadata_dir), BUNDLE_URL, fetcher=BundleFetcher(reader), config=UpdaterConfig(), bootstrap=None)
    try:
        updater.refresh()
        target = updater.get_targetinfo(name)
    except tuf_errors.BadVersionNumberError as e:
        # only an older timestamp (signed, just older than the device's) falls back; anything else,
        # a timestamp naming an older snapshot included, is refused as the attack it looks like
        if not str(e).startswith("New timestamp version"):
            raise TrustError(f"{path}: refused: {tuf_fault(e)} ({e})") from e
        # the bundle carries older metadata than the device trusts: its newer, trusted metadata decides
        target = _trusted_target(path, metadata_dir, name)
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
        raise TrustError(f"{path}: refused: {tuf_fault(e)} ({e})") from e
    except OSError as e:
        raise DeviceFault(f"{metadata_dir}: cannot keep the trusted metadata ({e.strerror})") from e
    if target is None:
        raise TrustError(f"{path}: {name} is not a target signed by the repository")
    return target


def _trusted_target(path: Path, metadata_dir: Path, name: str) -> TargetFile | None:
    """``name`` as the device's own trusted metadata has it (unexpired, already verified), or None."""
    updater = Updater(str(metadata_dir), BUNDLE_URL, fetcher=TrustedFetcher(metadata_dir), config=UpdaterConfig(), bootstrap=None)
    try:
        updater.refresh()
        return updater.get_targetinfo(name)
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
        raise TrustError(f"{path}: refused: its metadata is older than the device's, and the device's own: {tuf_fault(e)} "
                         f"({e})") from e
    except OSError as e:
        raise DeviceFault(f"{metadata_dir}: cannot read the trusted metadata ({e.strerror})") from e


def _check_root_chain(path: Path, names: set[str], metadata_dir: Path) -> None:
    """Every root version after the trusted one must be there: a device walks them one by one."""
    trusted = int(Path(os.readlink(metadata_dir / "root.json")).name.split(".")[0])
    carried = {int(n.split(".")[0]) for n in names if n.endswith(".root.json") and n.split(".")[0].isdigit()}
    newer = sorted(v for v in carried if v > trusted)
    if not newer or len(newer) == newer[-1] - trusted:
        return
    missing = trusted + 1
    while missing in carried:  # at most len(newer) steps: there is a gap below newer[-1]
        missing += 1
    raise TrustError(
        f"{path}: the root chain has a gap: the device trusts root version {trusted}, the bundle carries up to "
        f"{newer[-1]} but not {missing}"
    )


def _check_target(path: Path, name: str, target: TargetFile, index: bytes) -> None:
    try:
        target.verify_length_and_hashes(index)
    except tuf_errors.LengthOrHashMismatchError as e:
        digest = f"sha256:{hashlib.sha256(index).hexdigest()}"
        raise TrustError(f"{path}: bundle index {digest} is not the one signed as {name} ({e})") from e


def _check_profile(path: Path, info: BundleInfo, profile: Profile | None) -> None:
    if profile is None:
        return
    if info.profile != profile.name:
        raise BundleError(f"{path}: bundle {info.name} {info.version} is for profile {info.profile}, this device is {profile.name}")
    if info.compatible != profile.compatible:
        raise BundleError(
            f"{path}: bundle {info.name} {info.version} is compatible with {info.compatible!r}, "
            f"this device needs {profile.compatible!r}"
        )


def verify_overlay(path: Path, *, trust: TrustStore, identity: DeviceIdentity, app: str | None, app_version: str | None,
                   commit: bool = True) -> OverlayInfo:
    """Everything a device checks before an overlay may go into a slot (with ``app`` ``app_version``;
    None when nothing runs yet to check it against); the trusted state then advances (unless not
    ``commit``: a check before downloading what goes with it)."""
    record = identity.record()
    with trust.candidate() as metadata_dir, open_layout(path) as reader:
        name = signed_name(path, reader, metadata_dir)
        info = check_overlay(path)
        if overlay_target(info.name, info.site, info.version) != name:
            raise TrustError(f"{path}: the overlay is not the target it claims to be")
        if app is not None and info.name != app:
            raise UpdaterError(f"{path}: an overlay for {info.name}, this device runs {app}")
        if info.site != record.get("site"):
            raise UpdaterError(f"{path}: an overlay for site {info.site}, this device is enrolled at {record.get('site')}")
        if app_version is not None and not fits(info.fits, app_version):
            raise UpdaterError(f"{path}: overlay {info.version} fits {info.name} {info.fits}, not {app_version}")
        trust.check_version(info.name, f"overlays/{info.site}", info.version)
        open_sealed(info.sealed, Identity(app=info.name, site=info.site, version=info.version), str(record.get("device")),
                    identity.key())  # this device can read it: refused now, not after the switch
        if commit:
            trust.commit(metadata_dir, release=(info.name, f"overlays/{info.site}", info.version))
    return info
