"""The one place the device decides whether a bundle or a site overlay may be installed.

(1) TUF (:mod:`updater.tuf_client`), offline: the metadata the bundle carries is verified against
the device's trusted root and metadata, and the bundle's top index must be, byte for byte, the
target it claims to be (``NAME/PROFILE/VERSION``); (2) every blob's digest and size; (3) the bundle
was built for this device's profile and compatible string; (4) it is not older than a release the
device accepted. Only then does the device's trusted metadata advance. An overlay is checked the
same way, then against this device: its site, the release it runs with, its key opening the secrets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from updater.bundle import BundleInfo, verify_bundle
from updater.errors import Refused
from updater.identity import DeviceIdentity
from updater.layout import LayoutReader, open_layout
from updater.oci import MAX_JSON_BYTES
from updater.overlay import OverlayInfo, check_overlay
from updater.profiles import Profile
from updater.sealed import Identity, open_sealed
from updater.trust import TrustStore
from updater.tuf_client import LayoutMetadata, TufClient, claimed_target, target_name
from updater.versions import fits

__all__ = ["check_signed_target", "signed_name", "verify_for_device", "verify_overlay"]


def verify_for_device(path: Path, *, trust: TrustStore, profile: Profile | None) -> BundleInfo:
    """Check ``path`` completely; Refused naming the first fault found (DeviceFault for the device's own)."""
    with trust.candidate() as metadata_dir, open_layout(path) as reader:
        # (1) TUF: the index bytes are the target the bundle claims to be
        _, index = signed_index(reader, metadata_dir)
        # (2) every blob (of the very index TUF vouched for), (3) the hardware, (4) never an older release
        info = verify_bundle(path)
        signed_digest = f"sha256:{hashlib.sha256(index).hexdigest()}"
        if info.digest != signed_digest:
            raise Refused(f"{path}: changed while it was verified (index {info.digest}, signed {signed_digest})")
        _check_profile(path, info, profile)
        trust.check_version(info.name, info.profile, info.version)
        trust.commit(metadata_dir, release=(info.name, info.profile, info.version))
    return info


def signed_name(reader: LayoutReader, metadata_dir: Path) -> str:
    """The target name the layout's index is signed as (TUF against ``metadata_dir``, byte for byte)."""
    return signed_index(reader, metadata_dir)[0]


def signed_index(reader: LayoutReader, metadata_dir: Path, digest: str | None = None) -> tuple[str, bytes]:
    """The target name and bytes of the layout's top index (or of the index ``digest``, on a medium),
    once TUF, against ``metadata_dir`` and the layout's own metadata, has vouched for them."""
    index = _index_bytes(reader, digest)
    name = claimed_target(index, reader.location)
    client = TufClient(metadata_dir, LayoutMetadata(reader))
    client.refresh()
    client.check(name, index)
    return name, index


def check_signed_target(reader: LayoutReader, digest: str, *, trust: TrustStore) -> None:
    """Check that the index ``digest`` in ``reader`` (a medium) is a target signed by the repository
    whose metadata the medium carries, against ``trust``; the trusted state does not change."""
    with trust.candidate() as metadata_dir:
        signed_index(reader, metadata_dir, digest)


def _index_bytes(reader: LayoutReader, digest: str | None) -> bytes:
    import json

    try:
        digest = digest or json.loads(reader.read_small("index.json"))["manifests"][0]["digest"]
        with reader.open_blob(str(digest)) as stream:
            return stream.read(MAX_JSON_BYTES + 1)
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
        raise Refused(f"{reader.location}: no readable bundle index to look up in the signed targets") from e


def _check_profile(path: Path, info: BundleInfo, profile: Profile | None) -> None:
    if profile is None:
        return
    if info.profile != profile.name:
        raise Refused(f"{path}: bundle {info.name} {info.version} is for profile {info.profile}, this device is {profile.name}")
    if info.compatible != profile.compatible:
        raise Refused(
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
        name = signed_name(reader, metadata_dir)
        info = check_overlay(path)
        if target_name(name=info.name, site=info.site, version=info.version) != name:
            raise Refused(f"{path}: the overlay is not the target it claims to be")
        if app is not None and info.name != app:
            raise Refused(f"{path}: an overlay for {info.name}, this device runs {app}")
        if info.site != record.get("site"):
            raise Refused(f"{path}: an overlay for site {info.site}, this device is enrolled at {record.get('site')}")
        if app_version is not None and not fits(info.fits, app_version):
            raise Refused(f"{path}: overlay {info.version} fits {info.name} {info.fits}, not {app_version}")
        trust.check_version(info.name, f"overlays/{info.site}", info.version)
        open_sealed(info.sealed, Identity(app=info.name, site=info.site, version=info.version), str(record.get("device")),
                    identity.key())  # this device can read it: refused now, not after the switch
        if commit:
            trust.commit(metadata_dir, release=(info.name, f"overlays/{info.site}", info.version))
    return info
