"""The one place the device decides whether a bundle or a site overlay may be installed.

(1) TUF (:mod:`updater.tuf_client`), offline: the metadata the bundle carries is verified against
the device's trusted root and metadata, and the bundle's top index must be, byte for byte, the
target it claims to be (``NAME/PROFILE/VERSION``); (2) the bundle's structure and every blob (its
digest and size, or for a bundle in the device's store, whose blobs were hashed on their way in,
its size; compressed content is then checked as it is staged); (3) the bundle was built for this
device's profile and compatible string; (4) it is not older than a release the device accepted.
Only then does the device accept the release (TUF metadata verified on the way is kept whatever
follows, as the TUF client workflow says). An overlay is checked the same way, then against this
device: its site, the release it runs with, its key opening the secrets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from updater.artifact import Artifact, open_artifact
from updater.bundle import BundleInfo, verify_bundle
from updater.errors import Refused
from updater.identity import DeviceIdentity
from updater.layout import LayoutReader
from updater.oci import MAX_JSON_BYTES
from updater.overlay import OverlayInfo, check_overlay
from updater.profiles import Profile
from updater.sealed import Identity, open_sealed
from updater.trust import TrustedState
from updater.tuf_client import LayoutMetadata, TufClient, claimed_target, target_name
from updater.versions import fits

__all__ = ["check_signed_target", "signed_index", "take_metadata", "verify_for_device", "verify_overlay", "verifying"]


def verify_for_device(path: Path, *, trust: TrustedState, profile: Profile | None) -> BundleInfo:
    """Check the bundle at ``path`` completely, every blob hashed and every compressed content
    decompressed; Refused naming the first fault found (DeviceFault for the device's own). The trusted
    state advances when every check passed."""
    with open_artifact(path) as artifact, verifying(artifact, trust=trust, profile=profile, hashed=False) as info:
        return info


@contextmanager
def verifying(artifact: Artifact, *, trust: TrustedState, profile: Profile | None, hashed: bool,
              gate: Callable[[TufClient, BundleInfo], object] | None = None) -> Iterator[BundleInfo]:
    """Verify the bundle ``artifact`` and yield what it is; the device accepts the release (its version,
    the time) only if the block ends without an error (an install stages the release inside it:
    compressed content is checked as it is staged), while TUF metadata verified on the way is kept
    either way (see :mod:`updater.trust`). ``hashed``: its blobs were hashed on their way into the store.
    ``gate``, given the metadata that signs the release and what it is once every check passed, may
    hold it back (an install asks its staged rollout, :mod:`updater.gate`)."""
    with trust.candidate() as metadata_dir:
        # (1) TUF: the index bytes are the target the bundle claims to be
        _, index, client = signed_index(artifact.reader, metadata_dir, artifact.top.digest, notes=trust.notes)
        # (2) every blob (of the very index TUF vouched for), (3) the hardware, (4) never an older release
        info = verify_bundle(artifact, hashed=hashed)
        signed_digest = f"sha256:{hashlib.sha256(index).hexdigest()}"
        if info.digest != signed_digest:
            raise Refused(f"{artifact.path}: changed while it was verified (index {info.digest}, signed {signed_digest})")
        _check_profile(artifact.path, info, profile)
        trust.check_version(info.name, info.profile, info.version)
        if gate is not None:  # (5) the release's rollout lets this device install it now
            gate(client, info)
        yield info
        trust.commit(metadata_dir, release=(info.name, info.profile, info.version))


def signed_index(reader: LayoutReader, metadata_dir: Path, digest: str, *,
                 notes: list[str] | None = None) -> tuple[str, bytes, TufClient]:
    """The target name and bytes of the top index ``digest``, once TUF, against ``metadata_dir`` and
    the layout's own metadata, has vouched for them, and the client that did; what an operator should
    hear goes to ``notes``."""
    try:
        with reader.open_blob(digest) as stream:
            index = stream.read(MAX_JSON_BYTES + 1)
    except Refused as e:
        raise Refused(f"{reader.location}: no readable bundle index to look up in the signed targets ({e})") from e
    name = claimed_target(index, reader.location)
    client = TufClient(metadata_dir, LayoutMetadata(reader))
    client.refresh()
    client.check(name, index)
    if notes is not None:
        notes += client.notes
    return name, index, client


def check_signed_target(reader: LayoutReader, digest: str, *, trust: TrustedState) -> None:
    """Check that the index ``digest`` in ``reader`` (a medium) is a target signed by the repository
    whose metadata the medium carries, against ``trust``; nothing is accepted (verified metadata is kept)."""
    with trust.candidate() as metadata_dir:
        signed_index(reader, metadata_dir, digest, notes=trust.notes)


def take_metadata(reader: LayoutReader, *, trust: TrustedState, hold: Callable[[TufClient], object] | None = None) -> None:
    """Verify the signed metadata ``reader`` (a bundle or a medium) carries and keep what of it is newer
    than the device's, installing nothing: a medium may bring news for what runs (a rollout halted)
    with bundles the device already has. Refused when it fails verification; ``hold``, given the
    refreshed client, may stop what follows (the metadata is kept all the same)."""
    with trust.candidate() as metadata_dir:
        client = TufClient(metadata_dir, LayoutMetadata(reader))
        client.refresh()
        if hold is not None:
            hold(client)


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


def verify_overlay(source: Path | Artifact, *, trust: TrustedState, identity: DeviceIdentity, app: str | None,
                   app_version: str | None, commit: bool = True) -> OverlayInfo:
    """Everything a device checks before an overlay may go into a slot (with ``app`` ``app_version``;
    None when nothing runs yet to check it against); the device then accepts it (unless not
    ``commit``: a check before downloading what goes with it)."""
    if isinstance(source, Path):
        with open_artifact(source) as artifact:
            return verify_overlay(artifact, trust=trust, identity=identity, app=app, app_version=app_version, commit=commit)
    path = source.path
    record = identity.record()
    with trust.candidate() as metadata_dir:
        name, index, _ = signed_index(source.reader, metadata_dir, source.top.digest, notes=trust.notes)
        info = check_overlay(source)
        signed_digest = f"sha256:{hashlib.sha256(index).hexdigest()}"
        if info.digest != signed_digest:
            raise Refused(f"{path}: changed while it was verified (index {info.digest}, signed {signed_digest})")
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
