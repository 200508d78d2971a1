"""What to install of what arrived: a path or a medium offers a bundle and site overlays; the plan
says which of them this device installs, given what it runs.

:func:`read_offer` reads what an artifact claims to hold for this device (unverified: it only says
what to try; everything is verified before it is used). :func:`plan` decides: the offered bundle
when it is newer than the running release (or another build of it), with the newest offered
overlay that fits it and is newer than the running overlay; else that overlay alone, a rotation of
the site's configuration and secrets. A plan that cannot work (the running overlay does not fit
the offered release, and no offered one does) is refused before anything is copied.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from updater.artifact import Artifact, Kind, kind
from updater.content import read_json_blob
from updater.errors import Conflict, InputError, Refused
from updater.medium import MediumBundle, read_medium
from updater.oci import ANNOTATION, Descriptor
from updater.profiles import Profile
from updater.slots import DeviceState, Release
from updater.versions import fits, version_key

__all__ = ["Candidate", "Offer", "Plan", "failure_key", "newest_for", "offered_apps", "plan", "read_offer"]


@dataclass(frozen=True)
class Candidate:
    """A bundle or overlay an artifact holds: its index digest, application name and version, and an
    overlay's ``fits`` range, as its top index claims them."""

    digest: str
    name: str
    version: str
    fits: str = ""


@dataclass(frozen=True)
class Offer:
    """What an artifact holds for this device: a bundle for its profile (the newest, on a medium), the
    overlays for its site, or both."""

    bundle: Candidate | None = None
    overlays: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What to install of an offer: a bundle (None: the running release) and an overlay (None: the
    running release's overlay is carried, when it has one), by index digest."""

    bundle: str | None
    overlay: str | None

    def key(self, state: DeviceState) -> str | None:
        """The failure key of the release this plan installs (None when nothing runs to apply an overlay to)."""
        current = state.current
        app = self.bundle or (current.digest if current is not None else None)
        carried = self.overlay or (current.overlay_digest if current is not None else "")
        return None if app is None else f"{app}+{carried}" if carried else app


def offered_apps(artifact: Artifact, profile: Profile | None, site: str | None) -> list[str]:
    """The applications ``artifact`` holds releases of for a device of ``profile`` at ``site`` (bundles
    for its profile, overlays for its site), sorted; Refused, as :func:`read_offer`, when it holds none."""
    if artifact.kind is not Kind.MEDIUM:
        return [_claims(artifact, artifact.top).get(ANNOTATION.NAME, "")]
    contents = read_medium(artifact.reader, artifact.tops)
    names = {b.name for b in contents.bundles if profile is None or b.profile == profile.name}
    names |= {o.name for o in contents.overlays if site is not None and o.site == site}
    if not names:
        read_offer(artifact, profile, site)  # says why in its words
    return sorted(names)


def read_offer(artifact: Artifact, profile: Profile | None, site: str | None, *, app: str | None = None) -> Offer:
    """What ``artifact`` offers a device of ``profile`` at ``site`` (of application ``app`` only, when
    given); Refused when it holds nothing for it."""
    if artifact.kind is not Kind.MEDIUM and app is not None and (claimed := _claims(artifact, artifact.top).get(ANNOTATION.NAME)) != app:
        raise InputError(f"{artifact.path}: holds a release of {claimed}, not of {app}")
    if artifact.kind is Kind.BUNDLE:
        return Offer(bundle=_candidate(artifact, artifact.top))
    if artifact.kind is Kind.OVERLAY:
        claims = _claims(artifact, artifact.top)
        if claims.get(ANNOTATION.SITE) != site:
            raise Refused(f"{artifact.path}: an overlay for site {claims.get(ANNOTATION.SITE)}; this device is "
                          + (f"at site {site}" if site else "not enrolled at any site"))
        return Offer(overlays=(_candidate(artifact, artifact.top),))
    contents = read_medium(artifact.reader, artifact.tops)
    if app is not None:
        held = ", ".join(sorted({b.name for b in contents.bundles} | {o.name for o in contents.overlays})) or "nothing"
        contents = replace(contents, bundles=[b for b in contents.bundles if b.name == app],
                           overlays=[o for o in contents.overlays if o.name == app])
        if not contents.bundles and not contents.overlays:
            raise Refused(f"{artifact.path}: the medium holds nothing of application {app} (it holds {held})")
    # what an overlay fits, as its own index says (what TUF signs), not as the medium's listing says
    overlays = tuple(_candidate(artifact, o.top) for o in contents.overlays if site is not None and o.site == site)
    if overlays and not any(profile is None or b.profile == profile.name for b in contents.bundles):
        return Offer(overlays=overlays)  # a rotation medium
    if not contents.bundles and contents.overlays:
        sites = ", ".join(sorted({o.site for o in contents.overlays}))
        raise Refused(f"{artifact.path}: the medium holds only overlays, for sites {sites}; this device is "
                      + (f"at site {site}" if site else "not enrolled at any site"))
    bundle = newest_for(contents.bundles, profile, artifact)
    return Offer(bundle=Candidate(digest=bundle.top.digest, name=bundle.name, version=bundle.version), overlays=overlays)


def newest_for(bundles: list[MediumBundle], profile: Profile | None, artifact: Artifact) -> MediumBundle:
    """The newest bundle of a medium for ``profile``; Refused naming what the medium holds when there is none."""
    fitting = [b for b in bundles if profile is None or b.profile == profile.name]
    if not fitting:
        held = ", ".join(sorted({b.profile for b in bundles})) or "nothing"
        raise Refused(f"{artifact.path}: the medium holds no bundle for profile {profile.name if profile else '?'} (it holds {held})")
    if len({b.name for b in fitting}) > 1:
        names = ", ".join(sorted({b.name for b in fitting}))
        raise InputError(f"{artifact.path}: the medium holds releases of several applications ({names}); name one with --app")
    if len({b.profile for b in fitting}) > 1:
        raise InputError(f"{artifact.path}: the medium holds bundles for several profiles; name this device's with --profile")
    return max(fitting, key=lambda b: version_key(b.version))


def plan(state: DeviceState, offer: Offer, running_overlay: dict[str, Any] | None = None) -> Plan:
    """What of ``offer`` to install: its bundle, unless it is the running release or older (then the
    running release), with the newest offered overlay that fits that release and is newer than the
    running overlay (else the running overlay, ``running_overlay``, is carried).

    Refused when the running overlay does not fit the offered release and no offered overlay does;
    Conflict when there is no release for an overlay to apply to.
    """
    current = state.current
    bundle = offer.bundle
    if bundle is not None and current is not None and bundle.name == current.name and (
            bundle.digest == current.digest or version_key(bundle.version) < version_key(current.version)):
        bundle = None  # nothing new in it (an older release would be refused as a rollback anyway)
    if bundle is None and current is None:
        raise Conflict("an overlay needs a running release to apply to; install the application first")
    runs: Candidate | Release | None = bundle if bundle is not None else current
    assert runs is not None
    name, version = runs.name, runs.version
    floor = current.overlay if current is not None and current.overlay_digest and current.name == name else None
    overlays = [o for o in offer.overlays if o.name == name and fits(o.fits, version)
                and (floor is None or version_key(o.version) > version_key(floor))]
    overlay = max(overlays, key=lambda o: version_key(o.version)) if overlays else None
    if bundle is not None and overlay is None and running_overlay is not None and not (
            running_overlay.get("name") == name and fits(str(running_overlay.get("fits", "")), version)):
        raise Refused(f"{name} {version} does not fit the running site overlay {running_overlay.get('version')} "
                      f"({running_overlay.get('fits')}), and no overlay offered with it does")
    return Plan(bundle=bundle.digest if bundle is not None else None, overlay=overlay.digest if overlay is not None else None)


def failure_key(release: Release) -> str:
    """What a failed health check marks: the release's digest, with its overlay's when it has one
    (a bad overlay does not mark the application as bad)."""
    return f"{release.digest}+{release.overlay_digest}" if release.overlay_digest else release.digest


def _candidate(artifact: Artifact, top: Descriptor) -> Candidate:
    a = _claims(artifact, top)
    return Candidate(digest=top.digest, name=a.get(ANNOTATION.NAME, ""), version=a.get(ANNOTATION.VERSION, ""),
                     fits=a.get(ANNOTATION.FITS, "") if kind(top.artifact_type) is Kind.OVERLAY else "")


def _claims(artifact: Artifact, top: Descriptor) -> dict[str, str]:
    """What a top index claims to be: its own annotations (what TUF signs), not those of any listing."""
    found = read_json_blob(artifact.reader, top, "top index").get("annotations")
    return {k: v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}
