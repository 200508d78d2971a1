"""``sealift-updater install``: an A/B update with health checks and automatic rollback.

(1) verify (TUF, every blob, the profile); (2) stage into the inactive slot; (3) load the
images; (4) record ``trying`` durably; (5) stop the running release and start the new one;
(6) run the health checks; (7) commit, or roll back: stop the new release, start the previous
one, and record why, marking the new release as failed so it is not retried unless forced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from updater.appdef import HealthPolicy
from updater.bundle import BundleInfo, release_definition
from updater.errors import Conflict, InputError, Refused, SealiftError
from updater.gc import collect_images
from updater.health import HealthResult, Watched, wait_healthy
from updater.identity import DeviceIdentity
from updater.layout import open_layout
from updater.medium import looks_like_medium
from updater.overlay import OverlayInfo, is_overlay
from updater.profiles import Profile
from updater.runtime import Image, Runtime, image_tag
from updater.secrets import SecretStore
from updater.slots import DeviceState, Phase, Release, Slots
from updater.stage import clone_slot, overlay_of, stage_overlay, stage_release, staged_overlay
from updater.store import BundleStore, Incoming, Offer, Offered, offer
from updater.trust import TrustStore
from updater.verify import verify_for_device, verify_overlay
from updater.versions import fits, version_key

__all__ = ["Choice", "Installer", "Outcome", "choose", "failure_key"]

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Outcome:
    committed: bool
    release: Release
    reason: str
    fault: str = ""  # when not committed: what kind of failure made it roll back (docs/errors.md)


class Installer:
    """Installs releases on one device: its state directory, its trust, its engine."""

    def __init__(self, *, state_dir: Path, runtime: Runtime, profile: Profile | None, log: Log = lambda _: None) -> None:
        self.slots = Slots(state_dir)
        self.trust = TrustStore(state_dir)
        self.store = BundleStore(state_dir)
        self.identity = DeviceIdentity(state_dir)
        self.secrets = SecretStore(state_dir, self.identity)
        self.runtime = runtime
        self.profile = profile
        self.log = log

    def install(self, bundle: Path | Incoming, *, overlay: Path | None = None, force: bool = False) -> Outcome:
        """Install ``bundle`` (a bundle or medium at a path, or a download assembled in the store) with
        the site ``overlay`` as one transaction; or, when ``bundle`` is an overlay (or a medium whose
        only news for this device is its site's overlay), re-apply the running release with it."""
        shown = bundle.name if isinstance(bundle, Path) else bundle.top.digest
        with self.slots.locked():
            state = self._converge(self.slots.load())
            try:
                self.log(f"[1/7] verify {shown}" + (f" with {overlay.name}" if overlay else ""))
                if isinstance(bundle, Path) and is_overlay(bundle):
                    if overlay is not None:
                        raise InputError(f"{bundle}: an overlay, given where the application bundle goes")
                    return self._apply_overlay(state, bundle, force=force)
                if isinstance(bundle, Path) and looks_like_medium(bundle) and overlay is None:
                    choice = choose(state, offer(bundle, self.profile, self.site()), self.running_overlay(state))
                    overlay = self.store.take(bundle, self.profile, overlay=choice.overlay) if choice.overlay else None
                    if choice.bundle is None:
                        if overlay is None:
                            assert state.current is not None
                            return Outcome(committed=True, release=state.current, reason="already running")
                        return self._apply_overlay(state, overlay, force=force)
                local = self.store.take(bundle, self.profile) if isinstance(bundle, Path) else bundle.complete()
                return self._install(state, local, force=force, overlay=overlay)
            except SealiftError as e:
                # refused before the switch: the running release is untouched; say why in status
                self.slots.save(self.slots.load().with_event(reason=f"{e.fault}: {shown}: {e.diagnostics()}", fault=e.fault))
                raise
            finally:
                kept = self.slots.load()
                self.store.prune({r.digest for r in (kept.current, kept.previous) if r is not None})

    def _install(self, state: DeviceState, bundle: Path, *, force: bool, overlay: Path | None) -> Outcome:
        claimed = offer(bundle, self.profile, self.site()).bundle
        if overlay is not None and claimed is not None:  # one that cannot go with it is refused before its version counts
            verify_overlay(overlay, trust=self.trust, identity=self.identity, app=claimed.name, app_version=claimed.version,
                           commit=False)
        info = verify_for_device(bundle, trust=self.trust, profile=self.profile)
        if state.current is not None and state.current.digest == info.digest and overlay is None:
            return Outcome(committed=True, release=state.current, reason="already running")
        site = self._overlay_for(state, overlay, info.name, info.version)
        release = Release(name=info.name, version=info.version, profile=info.profile, digest=info.digest,
                          slot=state.inactive_slot(), overlay=site.version if site else "", overlay_digest=site.digest if site else "")
        if failure_key(release) in state.failed and not force:
            with_overlay = f" with overlay {release.overlay}" if release.overlay else ""
            raise Conflict(f"{info.name} {info.version}{with_overlay} failed its health checks before; use --force to try it again")
        slot_dir = self.slots.slot_dir(release.slot)
        self.log(f"[2/7] stage into slot {release.slot}")
        stage_release(bundle, info, slot_dir)
        if site is not None:
            stage_overlay(site, slot_dir)
        self.log("[3/7] load images")
        with open_layout(bundle) as reader:
            self.runtime.load_images(reader, images_of(info))
        self.log("[4/7] record trying")
        # the previous release's slot now holds the new one: it can no longer be returned to
        previous = state.previous if state.previous is not None and state.previous.slot != release.slot else None
        state = state.with_event(phase=Phase.TRYING, candidate=release, previous=previous, reason="")
        self.slots.save(state)
        return self._switch(state, release, "healthy")

    def _overlay_for(self, state: DeviceState, overlay: Path | None, app: str, version: str) -> OverlayInfo | None:
        """The overlay to stage with ``app`` ``version``: the one given (verified), or the running one if it fits."""
        if overlay is not None:
            return verify_overlay(overlay, trust=self.trust, identity=self.identity, app=app, app_version=version)
        if state.current is None:
            return None
        running_slot = self.slots.slot_dir(state.current.slot)
        running = overlay_of(running_slot)
        if running is None:
            return None
        if running.get("name") != app or not fits(str(running.get("fits", "")), version):
            raise Refused(f"the site overlay {running.get('version')} does not fit {app} {version} "
                               f"({running.get('fits')}); install it with an overlay that does")
        return staged_overlay(running_slot)

    def _apply_overlay(self, state: DeviceState, overlay: Path, *, force: bool) -> Outcome:
        """Run the current release again with a new overlay, from the other slot: checked and rolled back like an install."""
        current = state.current
        if current is None:
            raise Conflict(f"{overlay}: an overlay needs a running release to apply to; install the application first")
        site = verify_overlay(overlay, trust=self.trust, identity=self.identity, app=current.name, app_version=current.version)
        if site.digest == current.overlay_digest:
            return Outcome(committed=True, release=current, reason="already running")
        release = replace(current, slot=state.inactive_slot(), overlay=site.version, overlay_digest=site.digest)
        if failure_key(release) in state.failed and not force:
            raise Conflict(f"{current.name} {current.version} with overlay {site.version} failed its health checks before; "
                               "use --force to try it again")
        slot_dir = self.slots.slot_dir(release.slot)
        self.log(f"[2/7] stage {current.name} {current.version} with overlay {site.version} into slot {release.slot}")
        clone_slot(self.slots.slot_dir(current.slot), slot_dir)
        stage_overlay(site, slot_dir)
        self.log("[3/7] load images: none, the release's images are loaded")
        self.log("[4/7] record trying")
        previous = state.previous if state.previous is not None and state.previous.slot != release.slot else None
        state = state.with_event(phase=Phase.TRYING, candidate=release, previous=previous, reason="")
        self.slots.save(state)
        return self._switch(state, release, f"healthy with overlay {site.version}")

    def site(self) -> str | None:
        """The site this device is enrolled at (None when it is not enrolled)."""
        return self.identity.site()

    def running_overlay(self, state: DeviceState) -> dict[str, Any] | None:
        """The descriptor of the overlay staged with the running release (None when it runs without one)."""
        return overlay_of(self.slots.slot_dir(state.current.slot)) if state.current is not None else None

    def rollback(self) -> Outcome:
        """Return to the previous release on demand, with the same checks as an install."""
        with self.slots.locked():
            state = self._converge(self.slots.load())
            previous = state.previous
            if previous is None or state.current is None:
                raise Conflict("no previous release to roll back to")
            state = state.with_event(phase=Phase.TRYING, candidate=previous, reason="rollback requested")
            self.slots.save(state)
            return self._switch(state, previous, "rolled back on request")

    def recover(self) -> DeviceState:
        """Converge after a crash or a reboot: finish nothing half-done, run what is committed."""
        with self.slots.locked():
            return self._converge(self.slots.load())

    def _switch(self, state: DeviceState, release: Release, success: str) -> Outcome:
        slot_dir = self.slots.slot_dir(release.slot)
        self.log(f"[5/7] switch to {release.name} {release.version} in slot {release.slot}")
        if state.current is not None:
            self._stop(state.current)
        self._stop(release)  # leftovers of an earlier try
        try:
            self._start(release)
        except SealiftError as e:  # the engine refused to create or start it: roll back like a failed check
            result = HealthResult(ok=False, check="start", detail=e.diagnostics(), fault=e.fault)
        else:
            self.log("[6/7] health checks")
            result = wait_healthy(self._watched(release), _policy(slot_dir))
        if result.ok:
            self.log("[7/7] commit")
            committed = state.with_event(phase=Phase.COMMITTED, current=release, previous=state.current, candidate=None,
                                         reason=success)
            self.slots.save(committed)
            removed = collect_images(self.runtime, self.slots, committed)
            if removed:
                self.log(f"removed {len(removed)} image(s) no kept release uses")
            return Outcome(committed=True, release=release, reason=success)
        self.log(f"[7/7] roll back: {result.check} failed: {result.detail}")
        reason = f"{result.check} failed: {result.detail}"
        self.slots.save(state.with_event(phase=Phase.ROLLING_BACK, reason=reason, fault=result.fault))
        reason += self._back_to_current(state, release)
        self.slots.save(state.with_event(phase=Phase.ROLLED_BACK, candidate=None, reason=reason, fault=result.fault,
                                         failed=(*state.failed, failure_key(release))))
        return Outcome(committed=False, release=release, reason=reason, fault=result.fault)

    def _converge(self, state: DeviceState) -> DeviceState:
        """An install that was cut short is rolled back; the committed release is made to run."""
        if state.phase in (Phase.TRYING, Phase.ROLLING_BACK) and state.candidate is not None:
            self.log(f"recovering: an install of {state.candidate.name} {state.candidate.version} was interrupted")
            reason = "interrupted during install; returned to the committed release" + self._back_to_current(state, state.candidate)
            state = state.with_event(phase=Phase.ROLLED_BACK, candidate=None, reason=reason)
            self.slots.save(state)
        elif state.current is not None and not self._running(state.current):
            self.log(f"recovering: {state.current.name} {state.current.version} is not running; starting it")
            self._stop(state.current)
            self._start(state.current)
        return state

    def _back_to_current(self, state: DeviceState, leaving: Release) -> str:
        """Stop ``leaving``; start the committed release again. Returns what to add to the reason."""
        self._stop(leaving)
        current = state.current
        if current is None or current.slot == leaving.slot:
            return ""
        if not self._running(current):  # a switch cut short may have stopped it, or left it half-removed
            self._stop(current)
            try:
                self._start(current)
            except SealiftError as e:
                return f"; the previous release could not be started again either ({e.diagnostics()})"
        slot_dir = self.slots.slot_dir(current.slot)
        back = wait_healthy(self._watched(current), _policy(slot_dir))
        return "" if back.ok else f"; the previous release is not healthy either ({back.check}: {back.detail})"

    def _stop(self, release: Release) -> None:
        self.runtime.stop(release.name, release.slot)
        self.secrets.remove(release.name, release.slot)  # the opened secrets go with the containers

    def _start(self, release: Release) -> None:
        slot_dir = self.slots.slot_dir(release.slot)
        descriptor = _descriptor(slot_dir)
        app, _ = release_definition(str(slot_dir), descriptor)
        overlay = overlay_of(slot_dir)
        secrets = self.secrets.open_into_memory(release.name, release.slot, slot_dir, app.services) if overlay else None
        self.runtime.start(release, app, slot_dir, {i["name"]: i["config"] for i in descriptor["images"]},
                           environment=overlay.get("environment") if overlay else None, secrets=secrets)

    def _running(self, release: Release) -> bool:
        containers = self.runtime.containers(release.name, release.slot)
        return bool(containers) and all(c.running for c in containers.values())

    def _watched(self, release: Release) -> Watched:
        return Watched(runtime=self.runtime, app=release.name, slot=release.slot, slot_dir=self.slots.slot_dir(release.slot),
                       secrets=self.secrets.folder(release.name, release.slot))


@dataclass(frozen=True)
class Choice:
    """What to install of an offer: a bundle (None: the running release) and an overlay (None: the
    running release's overlay is carried, when it has one)."""

    bundle: str | None
    overlay: str | None

    def key(self, state: DeviceState) -> str | None:
        """The failure key of the release this choice installs (None when nothing runs to apply an overlay to)."""
        current = state.current
        app = self.bundle or (current.digest if current is not None else None)
        carried = self.overlay or (current.overlay_digest if current is not None else "")
        return None if app is None else f"{app}+{carried}" if carried else app


def choose(state: DeviceState, offered: Offer, running_overlay: dict[str, Any] | None = None) -> Choice:
    """What of ``offered`` to install: its bundle, unless it is the running release or older (then the
    running release), with the newest offered overlay that fits that release and is newer than the
    running overlay (else the running overlay, ``running_overlay``, is carried).

    Raises Refused or Conflict when that cannot work: the running overlay does not fit the offered release
    and no offered overlay does, or there is no release for an overlay to apply to.
    """
    current = state.current
    bundle = offered.bundle
    if bundle is not None and current is not None and bundle.name == current.name and (
            bundle.digest == current.digest or version_key(bundle.version) < version_key(current.version)):
        bundle = None  # nothing new in it (an older release would be refused as a rollback anyway)
    if bundle is None and current is None:
        raise Conflict("an overlay needs a running release to apply to; install the application first")
    runs: Offered | Release | None = bundle if bundle is not None else current
    assert runs is not None
    name, version = runs.name, runs.version
    floor = current.overlay if current is not None and current.overlay_digest and current.name == name else None
    overlays = [o for o in offered.overlays if o.name == name and fits(o.fits, version)
                and (floor is None or version_key(o.version) > version_key(floor))]
    overlay = max(overlays, key=lambda o: version_key(o.version)) if overlays else None
    if bundle is not None and overlay is None and running_overlay is not None and not (
            running_overlay.get("name") == name and fits(str(running_overlay.get("fits", "")), version)):
        raise Refused(f"{name} {version} does not fit the running site overlay {running_overlay.get('version')} "
                           f"({running_overlay.get('fits')}), and no overlay offered with it does")
    return Choice(bundle=bundle.digest if bundle is not None else None, overlay=overlay.digest if overlay is not None else None)


def images_of(info: BundleInfo) -> list[Image]:
    """The images of a verified bundle, and the tags they get on this device."""
    return [Image(name=i["name"], manifest=i["manifest"], config=i["config"],
                  tag=image_tag(info.name, i["name"], info.version, info.profile)) for i in info.descriptor["images"]]


def failure_key(release: Release) -> str:
    """What a failed health check marks: the release's digest, with its overlay's when it has one
    (a bad overlay does not mark the application as bad)."""
    return f"{release.digest}+{release.overlay_digest}" if release.overlay_digest else release.digest


def _policy(slot_dir: Path) -> HealthPolicy:
    return release_definition(str(slot_dir), _descriptor(slot_dir))[1]


def _descriptor(slot_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((slot_dir / "descriptor.json").read_text())
    return data
