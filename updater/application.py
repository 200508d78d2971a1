"""One application on a device: its two slots, its releases, and the switches between them.

An install (1) takes what arrived into the device's store (hashed on the way in) and decides what
of it to install; (2) verifies it (TUF, every blob, the profile) and stages it into the
application's inactive slot, checking compressed content as it is written; only then does the
device's trust advance; (3) loads the images; (4) records ``trying`` durably; (5) stops the
running release and starts the new one; (6) runs the health checks; (7) commits, or rolls back:
stops the new release, starts the previous one, and records why, marking the new release as
failed so it is not retried unless forced. Everything here happens under the application's own
lock; what applications share comes from the device's :class:`updater.install.Installer`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from updater.artifact import Artifact, Kind, open_artifact
from updater.bundle import BundleInfo
from updater.confinement import refuse_privileges
from updater.errors import Conflict, Deferred, DeviceFault, InputError, Refused, SealiftError
from updater.gate import Gate
from updater.gc import collect_images
from updater.health import HealthResult, Timing, Watched, wait_healthy
from updater.needs import lacking
from updater.overlay import OverlayInfo
from updater.plan import Candidate, failure_key, plan, read_offer
from updater.slots import DeviceState, Phase, Release, Serving, Slots
from updater.stage import (
    clone_slot,
    images_of,
    overlay_of,
    slot_holds,
    stage_overlay,
    stage_release,
    staged,
    staged_overlay,
    sweep_staging,
)
from updater.store import Incoming
from updater.verify import take_metadata, verify_overlay, verifying
from updater.versions import fits

if TYPE_CHECKING:
    from updater.install import Installer
    from updater.tuf_client import TufClient

__all__ = ["MAX_INTERRUPTED", "Application", "Outcome", "Serving", "images_of", "staged"]

MAX_INTERRUPTED = 3  # tries of a release cut short by a crash (a power cut, a hang that took the box down) before it counts as failed


@dataclass(frozen=True, kw_only=True)
class Outcome:
    committed: bool
    release: Release
    reason: str
    fault: str = ""  # when not committed: what kind of failure made it roll back (docs/errors.md)
    health: tuple[Timing, ...] = ()  # how its health checks went


class Application:
    """One application on ``device``: installs, rollbacks and recovery of its releases."""

    def __init__(self, device: Installer, name: str) -> None:
        self.device = device
        self.name = name
        self.slots = device.apps.slots(name)
        self.trust, self.store, self.identity = device.trust, device.store, device.identity
        self.secrets, self.runtime, self.profile = device.secrets, device.runtime, device.profile
        self._verified = False  # whether the release being installed was verified as this application's
        self._ignore_window = False  # the operator at the device installs outside the site's maintenance window

    def log(self, line: str) -> None:
        self.device.log(line)

    def site(self) -> str | None:
        return self.device.site()

    def install(self, source: Path | Incoming, *, overlay: Path | None = None, force: bool = False,
                ignore_window: bool = False) -> Outcome:
        """Install ``source`` (a bundle, an overlay or a medium at a path, or a download assembled in the
        store: what it holds of this application) with the site ``overlay`` as one transaction; an
        overlay alone (or a medium whose only news for this application is its site's overlay)
        re-applies the running release with it."""
        shown = source.name if isinstance(source, Path) else source.top.digest
        self._verified = False
        self._ignore_window = ignore_window
        with self._locked():
            state = self._converge_if_it_can()
            try:
                self.log(f"[1/7] verify {shown}" + (f" with {overlay.name}" if overlay else ""))
                bundle, overlay = self._take_in(state, source, overlay)
                if bundle is not None:
                    return self._install(state, bundle, force=force, overlay=overlay)
                if overlay is not None:
                    return self._apply_overlay(state, overlay, force=force)
                assert state.current is not None
                return Outcome(committed=True, release=state.current, reason="already running")
            except SealiftError as e:
                # refused before the switch: the running release is untouched; say why in status (a full
                # disk may not take even that: the error itself is what must reach the operator)
                with contextlib.suppress(DeviceFault):
                    if isinstance(e, Deferred):
                        self._say_waits(e)
                    elif self.slots.exists() or self._verified:  # no state for a name only an unverified index claims
                        self.slots.save(self.slots.load().with_event(reason=f"{e.fault}: {shown}: {e.diagnostics()}",
                                                                     fault=e.fault))
                raise

    def _take_in(self, state: DeviceState, source: Path | Incoming, overlay: Path | None) -> tuple[Path | None, Path | None]:
        """(1) The bundle to install, in the device's store (None: the running one), and the overlay to
        apply with it (None: the running one's, carried)."""
        if isinstance(source, Incoming):
            return source.complete(), overlay
        with open_artifact(source) as artifact:
            if artifact.kind is Kind.OVERLAY:
                if overlay is not None:
                    raise InputError(f"{source}: an overlay, given where the application bundle goes")
                self._take_metadata(artifact, None)
                return None, self.store.ingest(artifact, artifact.top.digest, advance=self._progress)
            offer = read_offer(artifact, self.profile, self.site(), app=self.name)
            if artifact.kind is Kind.BUNDLE or overlay is not None:
                if offer.bundle is None:
                    raise InputError(f"{source}: holds no bundle for {overlay} to go with; install the overlay alone")
                self._take_metadata(artifact, offer.bundle)
                return self.store.ingest(artifact, offer.bundle.digest, advance=self._progress), overlay
            chosen = plan(state, offer, self.running_overlay(state))
            self._take_metadata(artifact, offer.bundle if chosen.bundle else None)
            bundle = self.store.ingest(artifact, chosen.bundle, advance=self._progress) if chosen.bundle else None
            return bundle, self.store.ingest(artifact, chosen.overlay, advance=self._progress) if chosen.overlay else None

    def _take_metadata(self, artifact: Artifact, release: Candidate | None) -> None:
        """Keep the newer metadata what arrived carries (the store's copy of a bundle it has may be older: a
        rollout step), and, before anything is copied, Deferred when the rollout holds ``release``."""
        take_metadata(artifact.reader, trust=self.trust, hold=Gate(self.device).holding(release, ignore_window=self._ignore_window))

    def _install(self, state: DeviceState, bundle: Path, *, force: bool, overlay: Path | None) -> Outcome:
        with open_artifact(bundle) as artifact:
            claimed = read_offer(artifact, self.profile, self.site(), app=self.name).bundle
            assert claimed is not None
            # an overlay that cannot go with it is refused before the release's version counts
            site = self._overlay_for(state, overlay, claimed.name, claimed.version)
            # (2) verify and stage; the device trusts the release only once both succeeded
            with verifying(artifact, trust=self.trust, profile=self.profile, hashed=True, gate=self._may_install) as info:
                if (info.name, info.version) != (claimed.name, claimed.version):
                    raise Refused(f"{bundle}: its index claims {claimed.name} {claimed.version}, its descriptor {info.name} "
                                  f"{info.version}")
                self._verified = True  # signed as this application's: what it is refused for from now on is said in its status
                if state.current is not None and state.current.digest == info.digest and overlay is None:
                    return Outcome(committed=True, release=state.current, reason="already running")
                release = Release(name=info.name, version=info.version, profile=info.profile, digest=info.digest,
                                  slot=state.inactive_slot(), overlay=site.version if site else "",
                                  overlay_digest=site.digest if site else "")
                if failure_key(release) in state.failed and not force:
                    with_overlay = f" with overlay {release.overlay}" if release.overlay else ""
                    raise Conflict(f"{info.name} {info.version}{with_overlay} failed its health checks before; "
                                   "use --force to try it again")
                refuse_privileges(info.descriptor.app, allowed=self.profile is None or self.profile.allow_privileged,
                                  release=f"{info.name} {info.version}")
                if clash := self.device.clash(self.name, info.descriptor.app):
                    raise Conflict(f"{info.name} {info.version} cannot run beside the other applications: {clash}")
                if missing := lacking(info.descriptor.app, engine=self.runtime.features()):
                    raise DeviceFault(f"{info.name} {info.version} for {info.profile} needs what this device lacks: "
                                      f"{'; '.join(missing)}")
                self.log(f"[2/7] stage into slot {release.slot}")
                forgotten = self._forget_previous(state, release.slot)
                stage_release(artifact.reader, info, self.slots.slot_dir(release.slot), replacing=forgotten.save)
                state = forgotten.state
            notes = list(self.trust.notes)
            for note in notes:
                self.log(f"warning: {note}")
            if overlay is not None and site is not None:  # now that the release counts, so does its overlay
                again = verify_overlay(overlay, trust=self.trust, identity=self.identity, app=info.name, app_version=info.version)
                if again.digest != site.digest:
                    raise Refused(f"{overlay}: changed while it was installed (index {again.digest}, checked {site.digest})")
            if site is not None:
                stage_overlay(site, self.slots.slot_dir(release.slot))
            self.log("[3/7] load images")
            self.runtime.load_images(artifact.reader, images_of(info))
        self.log("[4/7] record trying")
        state = state.with_event(phase=Phase.TRYING, candidate=release, reason="")
        self.slots.save(state)
        return self._switch(state, release, "; ".join(["healthy", *notes]))

    def deferred(self, waits: Deferred) -> None:
        """Say in ``status`` and the journal why a release waits (another updater installing says its own)."""
        with contextlib.suppress(SealiftError), self._locked():
            self._say_waits(waits)

    def _say_waits(self, waits: Deferred) -> None:
        """Why a release waits, in the state and the journal, once: the same wait again changes nothing."""
        reason = f"{waits.fault}: {waits.diagnostics()}"
        state = self.slots.load()
        if state.reason != reason:
            self.slots.save(state.with_event(reason=reason, fault=waits.fault))
            self.device.journal.record("deferred", app=self.name, error=waits.diagnostics())

    def _may_install(self, client: TufClient, info: BundleInfo) -> None:
        """Deferred when the release's staged rollout holds it on this device now (:mod:`updater.gate`)."""
        self._verified = True  # signed as this application's: why it waits is said in its status
        Gate(self.device).check(client, info.name, info.version, ignore_window=self._ignore_window)

    def _forget_previous(self, state: DeviceState, slot: str) -> _Forgetting:
        """What to record once a new release is staged beside ``slot``'s, before ``slot`` is overwritten:
        that its previous release can no longer be returned to (so nothing cut short later can start
        the new files under the old name), and not before (a refused or failed staging keeps it)."""
        if state.previous is None or state.previous.slot != slot:
            return _Forgetting(self.slots, state, changed=False)
        return _Forgetting(self.slots, replace(state, previous=None), changed=True)

    def _overlay_for(self, state: DeviceState, overlay: Path | None, app: str, version: str) -> OverlayInfo | None:
        """The overlay to stage with ``app`` ``version``: the one given (verified; the device's trust advances
        once the release it goes with is verified too), or the running one if it fits."""
        if overlay is not None:
            return verify_overlay(overlay, trust=self.trust, identity=self.identity, app=app, app_version=version, commit=False)
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
        forgotten = self._forget_previous(state, release.slot)
        clone_slot(self.slots.slot_dir(current.slot), slot_dir, replacing=forgotten.save)
        state = forgotten.state
        stage_overlay(site, slot_dir)
        self.log("[3/7] load images: none, the release's images are loaded")
        self.log("[4/7] record trying")
        state = state.with_event(phase=Phase.TRYING, candidate=release, reason="")
        self.slots.save(state)
        return self._switch(state, release, f"healthy with overlay {site.version}")

    def running_overlay(self, state: DeviceState) -> dict[str, Any] | None:
        """The descriptor of the overlay staged with the running release (None when it runs without one)."""
        return overlay_of(self.slots.slot_dir(state.current.slot)) if state.current is not None else None

    def rollback(self, *, reason: str = "rollback requested") -> Outcome:
        """Return to the previous release on demand (``reason``: why), with the same checks as an install."""
        with self._locked():
            state = self._converge(self.slots.load())
            previous = state.previous
            if previous is None or state.current is None:
                raise Conflict("no previous release to roll back to")
            if why := self._not_held(previous):  # never start other files under its name
                self.slots.save(state.with_event(previous=None, reason=f"forgot the previous release: {why}"))
                raise Conflict(f"no previous release to roll back to: {why}")
            if clash := self.device.clash(self.name, staged(self.slots.slot_dir(previous.slot)).app):
                raise Conflict(f"{previous.name} {previous.version} cannot run beside the other applications: {clash}")
            state = state.with_event(phase=Phase.TRYING, candidate=previous, reason=reason)
            self.slots.save(state)
            return self._switch(state, previous, "rolled back on request" if reason == "rollback requested" else reason)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the application's install lock (Conflict at once if another updater holds it), with what a
        killed staging left swept away."""
        with self.slots.locked():
            sweep_staging(self.slots.root / "slots")
            yield

    def recover(self) -> DeviceState:
        """Converge after a crash or a reboot: finish nothing half-done, run what is committed."""
        with self._locked():
            return self._converge(self.slots.load())

    def serving(self, state: DeviceState | None = None) -> Serving:
        """What the engine runs of the committed release, each service it declares (EngineFault when the
        engine cannot tell)."""
        current = (state or self.slots.load()).current
        if current is None:
            return Serving(None, {})
        containers = self.runtime.containers(current.name, current.slot)
        declared = [s.name for s in staged(self.slots.slot_dir(current.slot)).app.services]
        return Serving(current, {name: containers[name].status if name in containers else "missing" for name in declared})

    def _switch(self, state: DeviceState, release: Release, success: str) -> Outcome:
        """(5) switch, (6) check, (7) commit or roll back. A release behind the ingress starts beside the
        running one, and the routes move to it only once it is healthy; any other stops the running
        release first (its host ports are needed)."""
        slot_dir = self.slots.slot_dir(release.slot)
        beside = self.device.behind_ingress(staged(slot_dir).app)
        self.log(f"[5/7] switch to {release.name} {release.version} in slot {release.slot}"
                 + (" beside the running release, behind the ingress" if beside and state.current else ""))
        if state.current is not None and not beside:
            self._stop(state.current)
        self._stop(release)  # leftovers of an earlier try
        try:
            self._start(release)
        except SealiftError as e:  # the engine refused to create or start it: roll back like a failed check
            result = HealthResult(ok=False, check="start", detail=e.diagnostics(), fault=e.fault)
        else:
            self.log("[6/7] health checks")
            result = wait_healthy(self._watched(release), staged(slot_dir).health, sleep=self._wait)
        checked = result.timings
        if result.ok and self._routes_follow(state.current, release):
            result = self._route(release, leaving=state.current if beside else None)
        if result.ok:
            return replace(self._commit(state, release, success), health=checked)
        self.log(f"[7/7] roll back: {result.check} failed: {result.detail}")
        reason = f"{result.check} failed: {result.detail}"
        self.slots.save(state.with_event(phase=Phase.ROLLING_BACK, reason=reason, fault=result.fault))
        reason += self._back_to_current(state, release)
        blamed = result.check != "ingress"  # a healthy release the ingress could not take is tried again
        self.slots.save(state.with_event(phase=Phase.ROLLED_BACK, candidate=None, reason=reason, fault=result.fault,
                                         failed=(*state.failed, failure_key(release)) if blamed else state.failed,
                                         interrupted=_without(state.interrupted, release)))
        return Outcome(committed=False, release=release, reason=reason, fault=result.fault, health=checked)

    def _routes_follow(self, current: Release | None, release: Release) -> bool:
        """Whether the ingress must learn of the switch: it has one, and either release has routes."""
        return self.device.ingress is not None and any(
            staged(self.slots.slot_dir(r.slot)).app.routes for r in (current, release) if r is not None)

    def _route(self, release: Release, *, leaving: Release | None) -> HealthResult:
        """Move the routes to ``release`` and drain the slot they leave (``leaving``'s); then stop what ran there."""
        self.log("[6/7] routes: to the new release" + ("; the old one drains" if leaving else ""))
        try:
            self.device.route(self.name, release, leaving=leaving.slot if leaving else None)
        except SealiftError as e:
            return HealthResult(ok=False, check="ingress", detail=e.diagnostics(), fault=e.fault)
        if leaving is not None:
            self._stop(leaving)
        return HealthResult(ok=True, check="ingress", detail="")

    def _commit(self, state: DeviceState, release: Release, success: str) -> Outcome:
        self.log("[7/7] commit")
        committed = state.with_event(phase=Phase.COMMITTED, current=release, previous=state.current, candidate=None,
                                     reason=success, interrupted=_without(state.interrupted, release))
        self.slots.save(committed)
        self.device.apps.forget_legacy_link(self.name)  # no container mounts files through it any more
        kept = [r for r in (committed.current, committed.previous) if r is not None]
        keep = {i.tag for r in kept for i in images_of(staged(self.slots.slot_dir(r.slot)))}
        removed = collect_images(self.runtime, release.name, keep)
        if removed:
            self.log(f"removed {len(removed)} image tag(s) no kept release uses")
        return Outcome(committed=True, release=release, reason=success)

    def _converge(self, state: DeviceState) -> DeviceState:
        """An install that was cut short is rolled back; the committed release is made to run."""
        if state.phase in (Phase.TRYING, Phase.ROLLING_BACK) and state.candidate is not None:
            candidate = state.candidate
            self.log(f"recovering: an install of {candidate.name} {candidate.version} was interrupted")
            # (1) counted first, the candidate still named: a crash in what follows (its containers
            # came back with the engine and took the box down again) is counted too, and the next
            # recovery still knows what to stop; (2) back to the committed release, uncounted if the
            # engine or the device fails there (not the candidate's doing); (3) recorded
            before = state
            state, why, failed = self._count_interrupted(state, candidate)
            self.slots.save(state)
            try:
                back = self._back_to_current(state, candidate)
            except SealiftError:
                self.slots.save(before)
                raise
            reason = f"{candidate.name} {candidate.version}: {why}; returned to the committed release"
            state = state.with_event(phase=Phase.ROLLED_BACK, candidate=None, fault=state.fault if failed else "",
                                     reason=reason + back)
            self.slots.save(state)
        elif state.current is not None and not self._running(state.current):
            self.log(f"recovering: {state.current.name} {state.current.version} is not running; starting it")
            self._stop(state.current)
            self._start(state.current)
        return state

    def _count_interrupted(self, state: DeviceState, candidate: Release) -> tuple[DeviceState, str, bool]:
        """``state`` with one more interrupted try of ``candidate`` counted (phase and candidate as they
        were), why, and whether it is now marked failed; after MAX_INTERRUPTED of them, or when it had already failed and was being rolled
        back, it is marked failed, so nothing tries it again by itself (as a boot loader counts boot
        attempts)."""
        key = failure_key(candidate)
        tries = state.interrupted.get(key, 0) + 1
        if key in state.failed:  # marked by an earlier recovery that was cut short itself
            why, failed = "interrupted again; marked failed already", True
        elif state.phase is Phase.ROLLING_BACK:
            why, failed = f"its rollback was interrupted after it failed ({state.reason}); marked failed", True
        elif tries >= MAX_INTERRUPTED:
            why, failed = f"interrupted {tries} times; marked failed (install it with --force to try again)", True
        else:
            why, failed = f"interrupted ({tries} of {MAX_INTERRUPTED} tries)", False
        if not failed:
            return replace(state, interrupted={**state.interrupted, key: tries}), why, False
        marked = state.failed if key in state.failed else (*state.failed, key)
        return replace(state, failed=marked, interrupted=_without(state.interrupted, candidate),
                       fault=state.fault or "unhealthy"), why, True

    def _back_to_current(self, state: DeviceState, leaving: Release) -> str:
        """Stop ``leaving``; start the committed release again (when it is not running), and send its
        routes back to it. Returns what to add to the reason."""
        current = state.current
        if current is None or current.slot == leaving.slot:
            self._stop(leaving)
            return ""
        if self._running(current):  # behind the ingress it never stopped: the routes go back before anything stops
            with contextlib.suppress(SealiftError):  # what the ingress cannot take is said by the next route()
                self.device.route(self.name, current)
        self._stop(leaving)
        if not self._running(current):  # a switch cut short may have stopped it, or left it half-removed
            self._stop(current)
            try:
                self._start(current)
                self.device.route(self.name, current)
            except SealiftError as e:
                return f"; the previous release could not be started again either ({e.diagnostics()})"
        back = wait_healthy(self._watched(current), staged(self.slots.slot_dir(current.slot)).health, sleep=self._wait)
        return "" if back.ok else f"; the previous release is not healthy either ({back.check}: {back.detail})"

    def _stop(self, release: Release) -> None:
        self.runtime.stop(release.name, release.slot)
        self.secrets.remove(release.name, release.slot)  # the opened secrets go with the containers

    def _start(self, release: Release) -> None:
        if why := self._not_held(release):
            raise DeviceFault(f"{release.name} {release.version} is not started: {why}")
        slot_dir = self.slots.slot_dir(release.slot)
        descriptor = staged(slot_dir)
        overlay = overlay_of(slot_dir)
        certificates = tuple((r.host, *r.tls) for r in descriptor.app.routes if r.host and r.tls)
        secrets = self.secrets.open_into_memory(release.name, release.slot, slot_dir, descriptor.app.services,
                                                certificates) if overlay else None
        self.runtime.start(release, descriptor.app, slot_dir, {i.name: i.config for i in descriptor.images},
                           environment=overlay.get("environment") if overlay else None, secrets=secrets)

    def _not_held(self, release: Release) -> str | None:
        """Why ``release``'s slot does not hold it (None when it does)."""
        held = slot_holds(self.slots.slot_dir(release.slot))
        if held is None:
            return f"slot {release.slot} holds no release"
        name, version, digest, overlay = held
        if (name, version) != (release.name, release.version) or (digest and digest != release.digest) \
                or overlay != release.overlay_digest:
            return f"slot {release.slot} now holds {name} {version}" + (f" with overlay {overlay[:19]}" if overlay else "")
        return None

    def _running(self, release: Release) -> bool:
        """Whether every service ``release`` declares runs."""
        containers = self.runtime.containers(release.name, release.slot)
        declared = [s.name for s in staged(self.slots.slot_dir(release.slot)).app.services]
        return all(name in containers and containers[name].running for name in declared)

    def _wait(self, seconds: float) -> None:
        self.device.alive()
        time.sleep(seconds)

    def _progress(self, _: int) -> None:
        self.device.alive()

    def _converge_if_it_can(self) -> DeviceState:
        """Converge before an install; when that fails, say so and install all the same: what arrives
        may be the fix for what keeps the device from converging (a release that will not start)."""
        try:
            return self._converge(self.slots.load())
        except SealiftError as e:
            self.log(f"warning: could not converge first ({e.fault}: {e.diagnostics()}); installing all the same")
            return self.slots.load()

    def _watched(self, release: Release) -> Watched:
        return Watched(runtime=self.runtime, app=release.name, slot=release.slot, slot_dir=self.slots.slot_dir(release.slot),
                       secrets=self.secrets.folder(release.name, release.slot))


@dataclass
class _Forgetting:
    """A state to record just before a slot's old content goes (see ``Installer._forget_previous``)."""

    slots: Slots
    state: DeviceState
    changed: bool

    def save(self) -> None:
        if self.changed:
            self.slots.save(self.state)


def _without(interrupted: dict[str, int], release: Release) -> dict[str, int]:
    return {k: v for k, v in interrupted.items() if k != failure_key(release)}

