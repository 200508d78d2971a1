"""Where a device finds its releases: a registry (a site mirror) it polls.

A poll (1) refreshes the device's TUF metadata from the registry's ``tuf.*`` artifacts, on a
throwaway copy of the trusted state; (2) lists the repository's tags for this profile
(``PROFILE-VERSION``) newest first, and takes the first whose index TUF signs as
``NAME/PROFILE/VERSION`` byte for byte: tags only point, the signature decides; (3) downloads into
the device's store only the blobs no kept bundle has, resuming a download cut off earlier; and
(4) hands the assembled bundle, with the metadata the refresh fetched, to the installer, which
verifies it all again before it touches a slot. The running release is never touched by a poll
that fails: an unreachable registry is retried with jittered, growing delays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from bundler.bundle import ANNOTATION
from bundler.errors import BundleError, ContentMismatch, DeliveryError, SealiftError
from bundler.layout import Descriptor
from bundler.profiles import Profile
from bundler.publish import MAX_METADATA_BYTES, bundle_descriptor, bundle_tag, connect, read_metadata
from bundler.registry import RegistryClient, Retry
from bundler.spec import version_key
from bundler.transfer import RegistryStore
from updater.errors import TrustError
from updater.install import Installer, Outcome
from updater.slots import DeviceState
from updater.verify import tuf_fault

__all__ = ["REGISTRY_URL", "Found", "RegistryFetcher", "RegistryPoller"]

REGISTRY_URL = "sealift-registry:/"
DEVICE_RETRY = Retry(delays=(1.0, 4.0, 15.0))  # within one poll; the daemon backs off further between polls
Log = Callable[[str], None]


class RegistryFetcher(FetcherInterface):
    """Serves ngclient the metadata files published in a repository, and keeps what it served."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.fetched: dict[str, bytes] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(REGISTRY_URL)
        try:
            data = read_metadata(self.client, name, limit=MAX_METADATA_BYTES)
        except DeliveryError as e:
            raise tuf_errors.DownloadError(e.diagnostics()) from e
        if data is None:
            raise tuf_errors.DownloadHTTPError(f"{name} is not published in {self.client.ref.name}", 404)
        self.fetched[name] = data
        return iter((data,))


@dataclass(frozen=True)
class Found:
    """The newest release the registry holds for this device, signed, and the metadata that says so."""

    top: Descriptor
    name: str
    version: str
    metadata: dict[str, bytes]


class RegistryPoller:
    """Polls ``source`` (``HOST/REPO``) for this device's newest signed release and installs it."""

    def __init__(self, source: str, *, installer: Installer, profile: Profile, plain_http: bool = False,
                 log: Log = lambda _: None, retry: Retry = DEVICE_RETRY) -> None:
        self.source = source
        self.installer = installer
        self.profile = profile
        self.plain_http = plain_http
        self.log = log
        self.retry = retry
        self.refused: set[str] = set()  # digests that failed verification: not downloaded again by this process
        self.advance: Callable[[int], None] = lambda _: None  # told of every piece downloaded (the daemon feeds its watchdog)

    def poll(self) -> Outcome | None:
        """One cycle: find, download, install. None when there is nothing newer to install."""
        client = connect(self.source, plain_http=self.plain_http, what="site registry", retry=self.retry)
        try:
            found = self.find(client, self.installer.slots.load())
            if found is None:
                return None
            self.log(f"found {found.name} {found.version} ({found.top.digest}) in {client.ref.name}")
            with self.installer.store.incoming(found.top) as incoming:  # resumes what an earlier poll left
                incoming.fill(RegistryStore(client), advance=self.advance)
                incoming.metadata = found.metadata
                moved = incoming.moved
                self.log(f"downloaded {moved.blobs_sent} blobs ({moved.bytes_sent} bytes); {moved.blobs_present} "
                         "already on this device")
                try:
                    return self.installer.install(incoming)
                except (TrustError, BundleError, ContentMismatch):
                    self.refused.add(found.top.digest)  # it will not verify: do not fetch it again
                    raise
        finally:
            client.close()

    def find(self, client: RegistryClient, state: DeviceState) -> Found | None:
        """The newest signed release for this profile newer than the running one, or None."""
        current = state.current
        candidates = []
        prefix = f"{self.profile.name}-"
        for tag in client.tags():
            if not tag.startswith(prefix):
                continue
            version = tag.removeprefix(prefix).replace("_", "+")
            try:
                candidates.append((version_key(version), version, tag))
            except (ValueError, SealiftError):
                continue
        if current is not None:
            floor = version_key(current.version)
            candidates = [c for c in candidates if c[0] > floor]
        if not candidates:
            return None
        with self.installer.trust.candidate() as metadata_dir:  # a copy: the trusted state changes only at install
            fetcher = RegistryFetcher(client)
            updater = Updater(str(metadata_dir), REGISTRY_URL, fetcher=fetcher, config=UpdaterConfig(), bootstrap=None)
            try:
                updater.refresh()
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
                raise TrustError(f"site registry {client.ref.name}: signed metadata refused: {tuf_fault(e)} ({e})") from e
            for _, version, tag in sorted(candidates, reverse=True):
                found = self._signed(client, updater, tag, state)
                if found is not None:
                    return Found(top=found[0], name=found[1], version=version, metadata=dict(fetcher.fetched))
        return None

    def _signed(self, client: RegistryClient, updater: Updater, tag: str, state: DeviceState) -> tuple[Descriptor, str] | None:
        fetched = client.get_manifest(tag)
        if fetched is None:
            return None
        body, media_type, digest = fetched
        if state.failed_as_next(digest) or digest in self.refused:
            return None
        try:
            top = bundle_descriptor(body, media_type, digest, f"{client.ref.name}:{tag}")
        except DeliveryError as e:
            self.log(f"skipped {tag}: {e.diagnostics()}")
            return None
        a = top.annotations
        name, profile, version = a.get(ANNOTATION.NAME, ""), a.get(ANNOTATION.PROFILE), a.get(ANNOTATION.VERSION, "")
        if profile != self.profile.name or bundle_tag(self.profile.name, version) != tag:
            self.log(f"skipped {tag}: its index is for {profile} {version}")
            return None
        target_path = f"{name}/{profile}/{version}"
        try:
            target = updater.get_targetinfo(target_path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise TrustError(f"site registry {client.ref.name}: signed metadata refused: {tuf_fault(e)} ({e})") from e
        if target is None:
            self.log(f"skipped {tag}: {target_path} is not a signed target")
            return None
        try:
            target.verify_length_and_hashes(body)
        except tuf_errors.LengthOrHashMismatchError:
            self.log(f"skipped {tag}: its index {digest} is not the one signed as {target_path}")
            return None
        return top, name
