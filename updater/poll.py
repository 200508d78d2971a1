"""Where a device finds its releases: a registry (a site mirror) it polls.

A poll (1) refreshes the device's TUF metadata from the registry's ``tuf.*`` artifacts, on a
throwaway copy of the trusted state (what verifies is kept: a halted rollout reaches the device this
way even when nothing is newer); (2) lists what the metadata signs for the device: its
application's releases for this profile (``NAME/PROFILE/VERSION``) and its site's overlays
(``NAME/overlays/SITE/VERSION``), newest first, and fetches each index by the digest its target
signs, so tags are for people (a repository whose targets are spread over hashed bins, which
cannot be listed without fetching every bin, adds the versions its tags name, each looked up in
the signed metadata); takes the newest release the repository holds, with the newest signed
overlay of the device's site that fits it, or, with no newer release, a newer overlay for the
running one (a rotation); (3) downloads into the device's store only the blobs no kept bundle
has, resuming a download cut off earlier; and (4) hands what it assembled, with the metadata the
refresh fetched, to the installer, which verifies it all again before it touches a slot. The
running release is never touched by a poll that fails: an unreachable registry is retried with
jittered, growing delays, and a repository that is missing or holds nothing signed for the device
fails the poll with its reason, never "up to date".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from updater import deltas
from updater.artifact import Kind
from updater.errors import Deferred, DeliveryError, InputError, Refused, SealiftError
from updater.gate import Gate
from updater.install import Installer, Outcome
from updater.names import NAME
from updater.oci import ANNOTATION, Descriptor
from updater.profiles import Profile
from updater.registry import RegistryClient, Retry, bundle_descriptor, connect
from updater.slots import DeviceState
from updater.stage import overlay_of
from updater.store import Incoming
from updater.transfer import RegistryEndpoint
from updater.tuf_client import RegistryMetadata, TufClient, claimed_target, target_name
from updater.verify import verify_overlay
from updater.versions import fits, version_key

__all__ = ["Found", "RegistryPoller", "Signed"]

_RELEASE_TAG = re.compile(r"(.+?)-[0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+_-]*")  # PROFILE-VERSION or site-SITE-VERSION
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DEVICE_RETRY = Retry(delays=(1.0, 4.0, 15.0))  # within one poll; the daemon backs off further between polls
Log = Callable[[str], None]


@dataclass(frozen=True)
class Signed:
    """A top index the registry holds, signed byte for byte as ``target`` (``name`` ``version``)."""

    top: Descriptor
    target: str
    name: str
    version: str

    @property
    def fits(self) -> str:
        return self.top.annotations.get(ANNOTATION.FITS, "")


@dataclass(frozen=True)
class Listed:
    """A release (or overlay) the metadata signs as ``target``: its version and its index's digest; ``newer``
    when it is above what the device runs."""

    target: str
    version: str
    digest: str
    newer: bool
    key: Any = field(compare=False)


@dataclass(frozen=True)
class Found:
    """What the registry holds that this device should install of application ``name``: a newer
    release (``app``; None: the running one) and its site's overlay (``overlay``; None: the running one is carried), and the
    metadata that signs them."""

    name: str
    app: Signed | None
    overlay: Signed | None
    metadata: dict[str, bytes]

    def __str__(self) -> str:
        parts = [f"{self.app.name} {self.app.version} ({self.app.top.digest})"] if self.app else []
        parts += [f"overlay {self.overlay.version} for site {self.overlay.top.annotations.get(ANNOTATION.SITE)} "
                  f"({self.overlay.top.digest})"] if self.overlay else []
        return " with ".join(parts)


class RegistryPoller:
    """Polls ``source`` (``HOST/REPO``, one application's repository) for this device's newest signed
    release of application ``app``, and its site's newest overlay, and installs them. Without ``app``,
    the application is the one the repository's newest bundle for this profile claims to be (the
    signature check confirms the claim, as for any release)."""

    def __init__(self, source: str, *, installer: Installer, profile: Profile, app: str | None = None,
                 plain_http: bool = False, log: Log = lambda _: None, retry: Retry = DEVICE_RETRY) -> None:
        self.source = source
        self.app = app
        self.installer = installer
        self.profile = profile
        self.plain_http = plain_http
        self.log = log
        self.retry = retry
        self.present: set[str] = set()  # digests of signed releases the repository was seen to hold (this poll)
        self.refused: set[str] = set()  # digests that failed verification: not downloaded again by this process
        self.held: tuple[str, Deferred] | None = None  # the application whose newest signed release waits, and why (the last poll)
        self.advance: Callable[[int], None] = lambda _: None  # told of every piece downloaded (the daemon feeds its watchdog)

    def poll(self) -> Outcome | None:
        """One cycle: find, download, install. None when there is nothing newer to install."""
        client = connect(self.source, plain_http=self.plain_http, what="site registry", retry=self.retry)
        try:
            found = self.find(client)
            if found is None:
                if self.held is not None:
                    self.installer.app(self.held[0]).deferred(self.held[1])
                return None
            state = self.installer.app(found.name).slots.load()
            self.log(f"found {found} in {client.ref.name}")
            with ExitStack() as stack:
                overlay = None
                if found.overlay is not None:  # a few kilobytes, checked before the release that goes with it is fetched
                    overlay = self._download(stack, client, found.overlay, found.metadata).complete()
                    runs_with = found.app or state.current
                    assert runs_with is not None  # find offers an overlay alone only for a running release
                    with self._refusing(found.overlay):
                        verify_overlay(overlay, trust=self.installer.trust, identity=self.installer.identity, app=runs_with.name,
                                       app_version=runs_with.version, commit=False)
                if found.app is None:
                    assert overlay is not None and found.overlay is not None
                    with self._refusing(found.overlay):
                        return self.installer.install(overlay, app=found.name)
                incoming = self._download(stack, client, found.app, found.metadata)
                with self._refusing(found.app):
                    return self.installer.install(incoming, overlay=overlay, app=found.name)
        finally:
            client.close()

    @contextmanager
    def _refusing(self, signed: Signed) -> Iterator[None]:
        """What fails verification in this block is not downloaded again by this process."""
        try:
            yield
        except SealiftError as e:
            if isinstance(e, Refused):
                self.refused.add(signed.top.digest)
            raise

    def _download(self, stack: ExitStack, client: RegistryClient, signed: Signed, metadata: dict[str, bytes]) -> Incoming:
        incoming = stack.enter_context(self.installer.store.incoming(signed.top, resumable=True))  # resumes what an earlier poll left
        listed = deltas.listed(client, signed.top.digest, warn=lambda why: self.log(f"{why}; its chunk deltas are passed over"))
        incoming.fill(RegistryEndpoint(client), deltas=listed, warn=self.log, advance=self.advance)
        incoming.metadata = metadata
        moved = incoming.moved
        rebuilt = f", {moved.blobs_rebuilt} rebuilt from chunk deltas ({moved.bytes_rebuilt} bytes)" if moved.blobs_rebuilt else ""
        self.log(f"downloaded {signed.target}: {moved.blobs_sent} blobs ({moved.bytes_sent} bytes){rebuilt}; {moved.blobs_present} "
                 "already on this device")
        return incoming

    def find(self, client: RegistryClient, state: DeviceState | None = None) -> Found | None:
        """The newest signed release of the application for this profile newer than the running one
        (``state``, default: what the device runs of it), with the newest signed overlay for this
        device's site that fits it; or, with no newer release, a newer overlay for the running one.
        None when there is nothing to install."""
        self.held = None
        self.present = set()
        tags = client.tags(must_exist=True)  # a repository that is not there is an outage to say, never "up to date"
        site = self.installer.site()
        with self.installer.trust.candidate() as metadata_dir:  # what it verifies is kept; releases are accepted only at install
            metadata = RegistryMetadata(client)
            tuf = TufClient(metadata_dir, metadata)
            try:
                tuf.refresh()  # with nothing newer too: the metadata may bring a halt of what runs (the service acts on it)
            except DeliveryError as e:
                if not _versions(tags, f"{self.profile.name}-", above=None) and not (site and _versions(tags, f"site-{site}-", above=None)):
                    raise self._nothing(client, tags) from e
                raise
            name = self.app or self._named(client, tuf, tags)
            if self.installer.declared and name not in self.installer.declared:
                raise InputError(f"{client.ref.name} holds {name}, which this device does not run (it runs "
                                 f"{', '.join(sorted(self.installer.declared))}): a source named for another application")
            state = state or self.installer.app(name).slots.load()
            current = state.current
            releases = self._listed(tuf, tags, name, above=current.version if current else None)
            overlays = self._listed(tuf, tags, name, site=site, above=current.overlay if current and current.overlay_digest
                                    else None) if site else []
            found = self._newest(client, tuf, name, state, releases, overlays, site)
            if found is None and not self._holds(client, releases + overlays):
                raise self._nothing(client, tags, name)
            return None if found is None else Found(name=name, app=found[0], overlay=found[1], metadata=dict(metadata.fetched))

    def _newest(self, client: RegistryClient, tuf: TufClient, name: str, state: DeviceState, releases: list[Listed],
                overlays: list[Listed], site: str | None) -> tuple[Signed | None, Signed | None] | None:
        current = state.current
        gate = Gate(self.installer)
        newer_overlays = [o for o in (self._signed(client, tuf, listed, site=site) for listed in overlays if listed.newer)
                          if o is not None]
        running = self._running_overlay(state)
        for listed in releases:
            if not listed.newer or (app := self._signed(client, tuf, listed)) is None or app.name != name:
                continue
            version = app.version
            overlay = next((o for o in newer_overlays if o.name == app.name and fits(o.fits, version)
                            and f"{app.top.digest}+{o.top.digest}" not in state.failed), None)
            if overlay is None and state.failed_as_next(app.top.digest):
                continue
            if overlay is None and running is not None and (running.get("name") != app.name
                                                            or not fits(str(running.get("fits", "")), version)):
                self.log(f"skipped {listed.target}: the site overlay {running.get('version')} does not fit it, and no newer one does")
                continue
            if not (decision := gate.decision(tuf, app.name, version)).install:  # not even downloaded while it waits
                self.held = self.held or (app.name, Deferred(f"{app.name} {version} waits: {decision.reason}"))
                continue
            return app, overlay
        if current is not None:
            for overlay in newer_overlays:
                if overlay.name == current.name and fits(overlay.fits, current.version) \
                        and f"{current.digest}+{overlay.top.digest}" not in state.failed:
                    return None, overlay
        return None

    def _running_overlay(self, state: DeviceState) -> dict[str, Any] | None:
        current = state.current
        return overlay_of(self.installer.app(current.name).slots.slot_dir(current.slot)) \
            if current is not None and current.overlay_digest else None

    def _named(self, client: RegistryClient, tuf: TufClient, tags: list[str]) -> str:
        """The application whose releases the repository holds, when the source does not name it: of the
        applications the device runs and those the top-level targets sign for this profile, the first of
        which the repository holds a signed release; else what its newest bundle tag claims, if signed."""
        profile = self.profile.name
        signed = {n.split("/", 1)[0] for n in tuf.signed_under("", lambda n: n.count("/") == 2 and n.split("/")[1] == profile)}
        candidates = sorted(set(self.installer.declared)) + sorted(signed - set(self.installer.declared))
        if (claimed := self._claimed(client, tags)) is not None and claimed not in candidates:
            candidates.append(claimed)
        for candidate in candidates:
            if self._holds(client, self._listed(tuf, tags, candidate, above=None)):
                return candidate
        raise self._nothing(client, tags)

    def _nothing(self, client: RegistryClient, tags: list[str], name: str | None = None) -> DeliveryError:
        site = self.installer.site()
        return DeliveryError(f"{client.ref.name} holds nothing signed for this device ({f'{name}, ' if name else ''}profile "
                             f"{self.profile.name}" + (f", site {site}" if site else "") + f"); it holds {_holdings(tags)}")

    def _listed(self, tuf: TufClient, tags: list[str], name: str, *, site: str | None = None,
                above: str | None) -> list[Listed]:
        """The releases of ``name`` for this profile (or, with ``site``, its overlays for the site) the
        metadata signs, newest first, ``newer`` when above ``above``. The signed targets are the list; tags
        only add names a repository with hashed bins cannot list, each looked up in the signed metadata."""
        prefix = target_name(name=name, version="", **({"site": site} if site else {"profile": self.profile.name}))
        signed = tuf.signed_under(prefix)
        floor = version_key(above) if above is not None else None
        tag_prefix = f"site-{site}-" if site else f"{self.profile.name}-"
        for version, _ in _versions(tags, tag_prefix, above=above):
            if (target := prefix + version) not in signed and (file := tuf.target(target)) is not None:
                signed[target] = file
        listed = []
        for target, file in signed.items():
            version = target.removeprefix(prefix)
            try:
                key = version_key(version)
            except (ValueError, SealiftError):
                continue
            digest = f"sha256:{file.hashes.get('sha256', '')}"
            if _DIGEST.fullmatch(digest):
                listed.append(Listed(target=target, version=version, digest=digest, newer=floor is None or key > floor, key=key))
        return sorted(listed, key=lambda t: t.key, reverse=True)

    def _present(self, client: RegistryClient, listed: Listed) -> bool:
        if listed.digest not in self.present and client.manifest_digest(listed.digest) is not None:
            self.present.add(listed.digest)
        return listed.digest in self.present

    def _holds(self, client: RegistryClient, listed: list[Listed]) -> bool:
        """Whether the repository holds any of the signed releases and overlays ``listed`` (newest first,
        asked until one is there: the one the device runs usually is)."""
        return any(self._present(client, one) for one in sorted(listed, key=lambda t: t.key, reverse=True))

    def _claimed(self, client: RegistryClient, tags: list[str]) -> str | None:
        """The application the repository's newest readable bundle tag for this profile claims to be: a hint
        for a repository whose targets are spread over hashed bins (the signature decides)."""
        for _, tag in _versions(tags, f"{self.profile.name}-", above=None):
            fetched = client.get_manifest(tag)
            if fetched is None:
                continue
            try:
                top = bundle_descriptor(*fetched, f"{client.ref.name}:{tag}", kinds=(Kind.BUNDLE,))
            except Refused:
                continue
            if NAME.fullmatch(claimed := top.annotations.get(ANNOTATION.NAME, "")):
                return claimed
        return None

    def _signed(self, client: RegistryClient, tuf: TufClient, listed: Listed, *, site: str | None = None) -> Signed | None:
        """The index signed as ``listed``, fetched by its digest, if it is what it is signed as (a bundle for
        this profile, or with ``site`` an overlay for that site), else None (and a line in the log saying why)."""
        if listed.digest in self.refused:
            return None
        fetched = client.get_manifest(listed.digest)
        if fetched is None:
            self.log(f"skipped {listed.target}: signed, but {client.ref.name} does not hold it (not pushed or synced there yet)")
            return None
        self.present.add(listed.digest)
        body, media_type, digest = fetched
        try:
            top = bundle_descriptor(body, media_type, digest, f"{client.ref.name}@{digest}",
                                    kinds=(Kind.OVERLAY,) if site else (Kind.BUNDLE,))
            if (claimed := claimed_target(body, f"{client.ref.name}@{digest}")) != listed.target:
                raise Refused(f"its index claims to be {claimed}")
        except Refused as e:
            self.log(f"skipped {listed.target}: {e.diagnostics()}")
            return None
        if why := tuf.doubts(listed.target, body):
            self.log(f"skipped {listed.target}: {why}")
            return None
        return Signed(top=top, target=listed.target, name=top.annotations[ANNOTATION.NAME], version=listed.version)


def _holdings(tags: list[str]) -> str:
    """What a repository holds, for people: its bundles' profiles and its overlays' sites, else its tags."""
    releases = sorted({m.group(1) for t in tags if (m := _RELEASE_TAG.fullmatch(t))})
    shown = releases or sorted(t for t in tags if not t.startswith("tuf."))
    more = f" and {len(shown) - 12} more" if len(shown) > 12 else ""
    return ", ".join(shown[:12]) + more if shown else "no release at all"


def _versions(tags: list[str], prefix: str, *, above: str | None) -> list[tuple[str, str]]:
    """(version, tag) of the tags ``PREFIX-VERSION`` newer than ``above``, newest first."""
    found = []
    for tag in tags:
        if not tag.startswith(prefix):
            continue
        version = tag.removeprefix(prefix).replace("_", "+")
        try:
            found.append((version_key(version), version, tag))
        except (ValueError, SealiftError):
            continue
    if above is not None:
        floor = version_key(above)
        found = [f for f in found if f[0] > floor]
    return [(version, tag) for _, version, tag in sorted(found, reverse=True)]
