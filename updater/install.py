"""``sealift-updater install``: what arrives goes to the application it belongs to.

A device runs several applications, each with its own slots, state and lock
(:mod:`updater.apps`; the A/B workflow itself is :class:`updater.application.Application`). The
installer holds what they share: the trusted metadata, the bundle store, the device's identity
and opened secrets, the engine, and the device's profile. It picks the application from what
arrived (what a bundle's or an overlay's own index claims, verified at install; on a medium, the
application named, or the one it holds), installs under that application's lock alone, and then
prunes the store of bundles no application keeps, when no other install is under way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from pathlib import Path

from updater.appdef import App
from updater.application import MAX_INTERRUPTED, Application, Outcome, Serving, images_of, staged
from updater.apps import Apps
from updater.artifact import Kind, open_artifact
from updater.bundle import BundleInfo
from updater.devicenet import conflicts
from updater.errors import Conflict, Deferred, InputError, Refused, SealiftError
from updater.identity import DeviceIdentity
from updater.ingress import Ingress, Placement
from updater.journal import Journal
from updater.lastseen import record_health
from updater.oci import ANNOTATION
from updater.overlay import OverlayInfo
from updater.plan import offered_apps, plan, read_offer
from updater.profiles import Profile
from updater.routes import route_clash
from updater.runtime import Runtime
from updater.secrets import OpenedSecrets
from updater.slots import DeviceState, Phase, Release
from updater.stage import overlay_of
from updater.store import BundleStore, Incoming
from updater.trust import TrustedState
from updater.verify import verify_for_device, verify_overlay

__all__ = ["MAX_INTERRUPTED", "Installer", "Outcome", "Serving", "check_as_installed", "images_of"]

Log = Callable[[str], None]


class Installer:
    """Installs releases on one device: its state directory, its trust, its engine, and the
    applications it is set up for (``declared``; empty: whatever arrives signed for it)."""

    def __init__(self, *, state_dir: Path, runtime: Runtime, profile: Profile | None, log: Log = lambda _: None,
                 declared: Collection[str] = ()) -> None:
        self.state_dir = state_dir
        self.apps = Apps(state_dir)
        self.trust = TrustedState(state_dir)
        self.store = BundleStore(state_dir)
        self.identity = DeviceIdentity(state_dir)
        self.secrets = OpenedSecrets(state_dir, self.identity)
        self.journal = Journal(state_dir)
        self.runtime = runtime
        self.profile = profile
        self.ingress = Ingress.of(state_dir)
        self.declared = frozenset(declared)
        self.log = log
        self.alive: Callable[[], None] = lambda: None  # called while it waits on health checks: a service feeds its watchdog

    def app(self, name: str) -> Application:
        """Application ``name`` on this device (installed or not)."""
        return Application(self, name)

    def install(self, source: Path | Incoming, *, overlay: Path | None = None, force: bool = False,
                app: str | None = None, ignore_window: bool = False) -> Outcome:
        """Install what ``source`` holds of application ``app`` (default: the one it holds) with the site
        ``overlay``; see :meth:`updater.application.Application.install`."""
        started = time.monotonic()
        name = ""
        try:
            name = app if app is not None else self.app_of(source)
            with self.apps.installing():
                outcome = self.app(name).install(source, overlay=overlay, force=force, ignore_window=ignore_window)
        except SealiftError as e:
            if not isinstance(e, Deferred):  # a wait is journaled by the application, once per reason
                self.journal.record("refused" if isinstance(e, Refused) else "install-failed", app=name, source=_shown(source),
                                    fault=e.fault, error=e.diagnostics())
            raise
        finally:
            self.prune()
        self.journaled("install", outcome, seconds=round(time.monotonic() - started, 2))
        return outcome

    def journaled(self, what: str, outcome: Outcome, **fields: object) -> None:
        """Record in the journal how an install or a rollback ended (a release already running: nothing)."""
        release = outcome.release
        if outcome.committed and outcome.reason == "already running":
            return
        self.journal.record("committed" if outcome.committed else "rolled-back", what=what, app=release.name,
                            version=release.version, overlay=release.overlay, reason=outcome.reason, fault=outcome.fault,
                            health=[t.to_json() for t in outcome.health], **fields)
        if outcome.health:  # what `status` and the metrics show of the last checks
            record_health(self.state_dir, release.name, {"version": release.version, "ok": outcome.committed,
                                                         "time": self.journal.now().isoformat(timespec="seconds"),
                                                         "checks": [t.to_json() for t in outcome.health]})

    def rollback(self, app: str | None = None, *, reason: str = "rollback requested") -> Outcome:
        """Return application ``app`` (default: the one installed) to its previous release (``reason``: why)."""
        name = self.apps.only(app)
        try:
            outcome = self.app(name).rollback(reason=reason)
        except SealiftError as e:
            self.journal.record("rollback-failed", app=name, fault=e.fault, error=e.diagnostics())
            raise
        self.journaled("rollback", outcome)
        return outcome

    def recover(self) -> dict[str, DeviceState | SealiftError]:
        """Converge every application (see :meth:`updater.application.Application.recover`): its
        state, or what kept it from converging; one that fails does not keep the others from it."""
        converged: dict[str, DeviceState | SealiftError] = {}
        self.trust.sweep()
        for name in self.apps.names():
            try:
                converged[name] = self.app(name).recover()
            except SealiftError as e:
                converged[name] = e
                self.journal.record("recover-failed", app=name, fault=e.fault, error=e.diagnostics())
        if self.ingress is not None:  # containers started again have new addresses
            try:
                self.route()
            except SealiftError as e:
                self.log(f"warning: the ingress could not be brought up to date ({e.fault}: {e.diagnostics()})")
        return converged

    def app_of(self, source: Path | Incoming) -> str:
        """The application ``source`` holds for this device, as its index claims it (the install verifies
        the claim); InputError when a medium holds several."""
        if isinstance(source, Incoming):
            return source.top.annotations.get(ANNOTATION.NAME, "")
        with open_artifact(source) as artifact:
            return _one_app(source, offered_apps(artifact, self.profile, self.site()))

    def site(self) -> str | None:
        """The site this device is enrolled at (None when it is not enrolled)."""
        return self.identity.site()

    def clash(self, app: str, wanted: App) -> str | None:
        """Why application ``app`` cannot run ``wanted`` beside the other applications' committed releases
        and those being tried (a host port both publish; what it provides or needs on the device network;
        a route both claim; HTTPS on an ingress without a TLS port), or None."""
        running = self.running_apps(besides=app)
        mine: dict[tuple[int | None, str], str] = {(p.host, p.protocol): s.name for s in wanted.services for p in s.ports if p.host}
        for other, theirs in running.items():
            for service in theirs.services if other != app else ():
                for port in service.ports:
                    if (port.host, port.protocol) in mine:
                        return f"{other}/{service.name} publishes host port {port.host}/{port.protocol}, which " \
                               f"{app}/{mine[(port.host, port.protocol)]} publishes too"
        if self.ingress is not None and self.ingress.tls_port is None and (tls := next((r for r in wanted.routes if r.tls), None)):
            return f"{app} serves {tls.host} over HTTPS, and this device's ingress has no TLS port (ingress init --tls-port)"
        return conflicts(app, wanted, running) or route_clash(app, wanted, running)

    def behind_ingress(self, app: App) -> bool:
        """Whether a release of ``app`` switches through the ingress, beside the running one: the device has
        an ingress, and the application has routes and publishes no host port of its own."""
        return self.ingress is not None and bool(app.routes) and not any(
            s.container.host_network or any(p.host for p in s.ports) for s in app.services)

    def route(self, app: str | None = None, release: Release | None = None, *, leaving: str | None = None) -> None:
        """Bring the ingress up to date with what every application runs, ``app`` running ``release`` (when
        given, and draining its slot ``leaving``)."""
        if self.ingress is None:
            return
        placements = []
        for name, state in self.apps.states().items():
            runs = release if name == app else state.current
            if runs is None:
                continue
            routes = staged(self.apps.slots(name).slot_dir(runs.slot)).app.routes
            if routes:
                addresses = {slot: {service: c.address for service, c in self.runtime.containers(name, slot).items() if c.running}
                             for slot in ("a", "b")}
                opened = self.secrets.folder(name, runs.slot)
                certificates = {r.host: opened / ".ingress" / f"{r.host}.pem" if opened else None
                                for r in routes if r.host and r.tls}
                placements.append(Placement(app=name, routes=routes, slot=runs.slot, addresses=addresses,
                                            certificates=certificates))
        self.ingress.apply(placements, app=app, leaving=leaving)

    def running_apps(self, *, besides: str | None = None) -> dict[str, App]:
        """The application definitions of every application's committed release, by application; and of
        each one being tried by another updater now (besides ``besides``), as ``NAME (being installed)``."""
        found = {}
        for name, state in self.apps.states().items():
            if state.current is not None:
                found[name] = staged(self.apps.slots(name).slot_dir(state.current.slot)).app
            if name != besides and state.candidate is not None and state.phase is Phase.TRYING:
                found[f"{name} (being installed)"] = staged(self.apps.slots(name).slot_dir(state.candidate.slot)).app
        return found

    def prune(self) -> None:
        """Remove the bundles no application keeps from the store, unless an install is under way (the
        next one prunes) or an application's state cannot be read (nothing is removed on a guess)."""
        with self.apps.alone() as alone, contextlib.suppress(SealiftError):
            if alone:
                kept = [r for s in self.apps.states().values() for r in (s.current, s.previous, s.candidate)]
                self.store.prune({r.digest for r in kept if r is not None})


def check_as_installed(path: Path, *, trust: TrustedState, profile: Profile | None,
                       app: str | None = None) -> tuple[BundleInfo | None, OverlayInfo | None]:
    """Verify a bundle or an overlay completely, or what an install of application ``app`` (default: the
    one it holds) would take from a medium (a delta is completed from the device's store first; what
    is taken stays there, and the next install prunes it). The device's trusted metadata advances as
    an install's would."""
    identity = DeviceIdentity(trust.state_dir)
    apps = Apps(trust.state_dir)
    with open_artifact(path) as artifact:
        if artifact.kind is Kind.BUNDLE:
            return verify_for_device(path, trust=trust, profile=profile), None
        slots = apps.slots(app or _one_app(path, offered_apps(artifact, profile, identity.site())))
        state = slots.load()
        running = state.current
        if artifact.kind is Kind.OVERLAY:
            return None, verify_overlay(artifact, trust=trust, identity=identity, app=running.name if running else None,
                                        app_version=running.version if running else None)
        store = BundleStore(trust.state_dir)
        offer = read_offer(artifact, profile, identity.site(), app=slots.root.name)
        chosen = plan(state, offer, overlay_of(slots.slot_dir(running.slot)) if running else None)  # refused as an install would
        # the bundle an install would take; or, when the medium brings nothing new, its bundle all the same
        bundle = chosen.bundle or (offer.bundle.digest if offer.bundle is not None and chosen.overlay is None else None)
        info = verify_for_device(store.ingest(artifact, bundle), trust=trust, profile=profile) if bundle else None
        overlay = None
        if chosen.overlay:
            runs_with = info or running
            overlay = verify_overlay(store.ingest(artifact, chosen.overlay), trust=trust, identity=identity,
                                     app=runs_with.name if runs_with else None, app_version=runs_with.version if runs_with else None)
    if info is None and overlay is None:
        raise Conflict(f"{path}: holds no bundle for this device, and no overlay newer than the one it runs")
    return info, overlay


def _one_app(source: Path, names: list[str]) -> str:
    """The one application ``source`` holds releases of; InputError when it holds several."""
    if len(names) > 1:
        raise InputError(f"{source}: holds releases of several applications ({', '.join(names)}); name one with --app")
    return names[0]


def _shown(source: Path | Incoming) -> str:
    """Where an install came from, as the journal names it."""
    return str(source) if isinstance(source, Path) else f"registry ({source.top.digest[:19]})"
