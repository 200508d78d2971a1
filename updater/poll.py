"""Where a device finds its releases: a registry (a site mirror) it polls.

A poll (1) refreshes the device's TUF metadata from the registry's ``tuf.*`` artifacts, on a
throwaway copy of the trusted state (what verifies is kept: a halted rollout reaches the device this
way even when nothing is newer); (2) lists the repository's tags for this profile
(``PROFILE-VERSION``) newest first, and takes the first whose index TUF signs as
``NAME/PROFILE/VERSION`` byte for byte: tags only point, the signature decides; with it, the newest
signed overlay of the device's site (``site-SITE-VERSION``, signed as
``NAME/overlays/SITE/VERSION``) that fits it, or, with no newer release, a newer overlay for the
running one (a rotation); (3) downloads into the device's store only the blobs no kept bundle has,
resuming a download cut off earlier; and (4) hands what it assembled, with the metadata the
refresh fetched, to the installer, which verifies it all again before it touches a slot. The
running release is never touched by a poll that fails: an unreachable registry is retried with
jittered, growing delays.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from updater.artifact import Kind
from updater.errors import Deferred, DeliveryError, InputError, Refused, SealiftError
from updater.gate import Gate
from updater.install import Installer, Outcome
from updater.names import NAME
from updater.oci import ANNOTATION, Descriptor
from updater.profiles import Profile
from updater.registry import RegistryClient, Retry, bundle_descriptor, bundle_tag, connect, overlay_tag
from updater.slots import DeviceState
from updater.stage import overlay_of
from updater.store import Incoming
from updater.transfer import RegistryEndpoint
from updater.tuf_client import RegistryMetadata, TufClient, target_name
from updater.verify import verify_overlay
from updater.versions import fits, version_key

__all__ = ["Found", "RegistryPoller", "Signed"]

_RELEASE_TAG = re.compile(r"(.+?)-[0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+_-]*")  # PROFILE-VERSION or site-SITE-VERSION
DEVICE_RETRY = Retry(delays=(1.0, 4.0, 15.0))  # within one poll; the daemon backs off further between polls
Log = Callable[[str], None]


@dataclass(frozen=True)
class Signed:
    """A top index the registry holds under ``tag``, signed byte for byte as what it claims to be (``name`` ``version``)."""

    top: Descriptor
    tag: str
    name: str
    version: str

    @property
    def fits(self) -> str:
        return self.top.annotations.get(ANNOTATION.FITS, "")


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
        incoming.fill(RegistryEndpoint(client), advance=self.advance)
        incoming.metadata = metadata
        moved = incoming.moved
        self.log(f"downloaded {signed.tag}: {moved.blobs_sent} blobs ({moved.bytes_sent} bytes); {moved.blobs_present} "
                 "already on this device")
        return incoming

    def find(self, client: RegistryClient, state: DeviceState | None = None) -> Found | None:
        """The newest signed release of the application for this profile newer than the running one
        (``state``, default: what the device runs of it), with the newest signed overlay for this
        device's site that fits it; or, with no newer release, a newer overlay for the running one.
        None when there is nothing to install."""
        self.held = None
        tags = client.tags(must_exist=True)  # a repository that is not there is an outage to say, never "up to date"
        site = self.installer.site()
        if not _versions(tags, f"{self.profile.name}-", above=None) and not (site and _versions(tags, f"site-{site}-", above=None)):
            raise DeliveryError(f"{client.ref.name} holds nothing for this device (profile {self.profile.name}"
                                + (f", site {site}" if site else "") + f"); it holds {_holdings(tags)}")
        name = self.app or self._claimed(client, tags)
        if name is None:
            raise DeliveryError(f"{client.ref.name}: no bundle for profile {self.profile.name} there can be read")
        if self.installer.declared and name not in self.installer.declared:
            raise InputError(f"{client.ref.name} holds {name}, which this device does not run (it runs "
                             f"{', '.join(sorted(self.installer.declared))}): a source named for another application")
        state = state or self.installer.app(name).slots.load()
        current = state.current
        apps = _versions(tags, f"{self.profile.name}-", above=current.version if current else None)
        overlays = _versions(tags, f"site-{site}-", above=current.overlay if current and current.overlay_digest else None) \
            if site else []
        if not apps and not overlays and current is None:
            return None
        with self.installer.trust.candidate() as metadata_dir:  # what it verifies is kept; releases are accepted only at install
            metadata = RegistryMetadata(client)
            tuf = TufClient(metadata_dir, metadata)
            tuf.refresh()  # with nothing newer too: the metadata may bring a halt of what runs (the service acts on it)
            if not apps and not overlays:
                return None
            gate = Gate(self.installer)
            signed_overlays = [o for o in (self._signed(client, tuf, tag, version, site=site) for version, tag in overlays)
                               if o is not None]
            running = self._running_overlay(state)
            for version, tag in apps:
                app = self._signed(client, tuf, tag, version)
                if app is None or app.name != name:
                    continue
                overlay = next((o for o in signed_overlays if o.name == app.name and fits(o.fits, version)
                                and f"{app.top.digest}+{o.top.digest}" not in state.failed), None)
                if overlay is None and state.failed_as_next(app.top.digest):
                    continue
                if overlay is None and running is not None and (running.get("name") != app.name
                                                                or not fits(str(running.get("fits", "")), version)):
                    self.log(f"skipped {tag}: the site overlay {running.get('version')} does not fit it, and no newer one does")
                    continue
                if not (decision := gate.decision(tuf, app.name, version)).install:  # not even downloaded while it waits
                    self.held = self.held or (app.name, Deferred(f"{app.name} {version} waits: {decision.reason}"))
                    continue
                return Found(name=name, app=app, overlay=overlay, metadata=dict(metadata.fetched))
            if current is not None:
                for overlay in signed_overlays:
                    if overlay.name == current.name and fits(overlay.fits, current.version) \
                            and f"{current.digest}+{overlay.top.digest}" not in state.failed:
                        return Found(name=name, app=None, overlay=overlay, metadata=dict(metadata.fetched))
        return None

    def _running_overlay(self, state: DeviceState) -> dict[str, Any] | None:
        current = state.current
        return overlay_of(self.installer.app(current.name).slots.slot_dir(current.slot)) \
            if current is not None and current.overlay_digest else None

    def _claimed(self, client: RegistryClient, tags: list[str]) -> str | None:
        """The application the repository's newest readable bundle for this profile claims to be (the
        signature check of the release confirms it; a source named with its application skips this)."""
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

    def _signed(self, client: RegistryClient, tuf: TufClient, tag: str, version: str, *, site: str | None = None) -> Signed | None:
        """The index tagged ``tag`` if TUF signs it as what it claims to be (a bundle for this profile,
        or with ``site`` an overlay for that site), else None (and a line in the log saying why)."""
        fetched = client.get_manifest(tag)
        if fetched is None:
            return None
        body, media_type, digest = fetched
        if digest in self.refused:
            return None
        try:
            kinds = (Kind.OVERLAY,) if site else (Kind.BUNDLE,)
            top = bundle_descriptor(body, media_type, digest, f"{client.ref.name}:{tag}", kinds=kinds)
        except Refused as e:
            self.log(f"skipped {tag}: {e.diagnostics()}")
            return None
        a = top.annotations
        name, claimed = a.get(ANNOTATION.NAME, ""), a.get(ANNOTATION.VERSION, "")
        if site is not None:
            target_path = target_name(name=name, site=site, version=claimed)
            if a.get(ANNOTATION.SITE) != site or overlay_tag(site, claimed) != tag:
                self.log(f"skipped {tag}: its index is an overlay for site {a.get(ANNOTATION.SITE)} {claimed}")
                return None
        else:
            target_path = target_name(name=name, profile=self.profile.name, version=claimed)
            if a.get(ANNOTATION.PROFILE) != self.profile.name or bundle_tag(self.profile.name, claimed) != tag:
                self.log(f"skipped {tag}: its index is for {a.get(ANNOTATION.PROFILE)} {claimed}")
                return None
        if why := tuf.doubts(target_path, body):
            self.log(f"skipped {tag}: {why}")
            return None
        return Signed(top=top, tag=tag, name=name, version=version)


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
