"""The device network: how applications on one device reach each other, by name.

An application declares, at the top of its Compose file, what it offers the device's other
applications and what it needs of them::

    x-sealift:
      provides:
        mqtt: {service: broker, port: 1883}
      needs: [historian-api]

Every service of an application that provides or needs something joins ``sealift-device``, one
bridge network the device's applications share (internal: nothing leaves the device through it),
as ``SERVICE.APP``; a provided service answers to the provided name as well (``mqtt``). Both
names belong to the application, not to a slot, so they hold across updates of either side, and
no host port is needed between applications. On the device, an install whose needs no other
application's running release provides, one that provides a name another application provides,
one that no longer provides what another application needs, and one that would make applications
need each other in a circle are refused before anything changes (:func:`conflicts`); a rollback
is checked the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from updater.names import NAME
from updater.yamlfile import Field

if TYPE_CHECKING:
    from updater.appdef import App

__all__ = ["DEVICE_NETWORK", "Provided", "conflicts", "links_data", "parse_links"]

DEVICE_NETWORK = "sealift-device"


@dataclass(frozen=True)
class Provided:
    """A name other applications reach: a service of this application, on one of its ports."""

    name: str
    service: str
    port: int


def parse_links(top: Mapping[str, Field], services: tuple[str, ...]) -> tuple[tuple[Provided, ...], tuple[str, ...]]:
    """What a Compose file's top-level ``x-sealift`` (its fields, ``top``) says the application provides and needs."""
    provides = []
    for name, sub in top["provides"].entries(key_pattern=NAME, key_what="provided name") if "provides" in top else ():
        f = sub.mapping(required=("service", "port"))
        service = f["service"].string(what="the name of a service")
        if service not in services:
            raise f["service"].error(f"{service!r} is not a service of this application (services: {', '.join(services)})")
        if name in services:
            raise sub.error(f"{name!r} names a service of this application; provide it under another name")
        provides.append(Provided(name=name, service=service, port=f["port"].integer(low=1, high=65535)))
    needs = top["needs"].string_list(pattern=NAME, what="a provided name") if "needs" in top else ()
    for need in needs:
        if need in services or any(p.name == need for p in provides):
            raise top["needs"].error(f"{need!r} is a name of this application's own; it needs no other application for it")
    return tuple(provides), tuple(dict.fromkeys(needs))


def links_data(provides: tuple[Provided, ...], needs: tuple[str, ...]) -> dict[str, object]:
    """The top-level ``x-sealift`` of a Compose file saying this (empty when there is nothing to say)."""
    data: dict[str, object] = {}
    if provides:
        data["provides"] = {p.name: {"service": p.service, "port": p.port} for p in provides}
    if needs:
        data["needs"] = list(needs)
    return data


def conflicts(name: str, app: App, running: Mapping[str, App]) -> str | None:
    """Why application ``name`` cannot run ``app`` beside the other applications' running releases
    (``running``, by application; ``name``'s own is left out), or None."""
    others = {n: a for n, a in running.items() if n != name}
    providers = {p.name: n for n, a in others.items() for p in a.provides}
    for provided in app.provides:
        if provided.name in providers:
            return f"{name} provides {provided.name}, which {providers[provided.name]} provides already"
    for need in app.needs:
        if need not in providers:
            offered = ", ".join(f"{p} ({n})" for p, n in sorted(providers.items())) or "nothing"
            return f"{name} needs {need}, which no other application on this device provides (they provide: {offered})"
    after = providers | {p.name: name for p in app.provides}
    for other, theirs in sorted(others.items()):
        if lost := next((need for need in theirs.needs if need not in after), None):
            return f"{other} needs {lost}, which {name} provides now and would no longer"
    return _circle(name, {**others, name: app}, after)


def _circle(start: str, apps: Mapping[str, App], providers: Mapping[str, str]) -> str | None:
    """A chain of needs that leads from ``start`` back to it, said as one; None when there is none."""
    path = [start]

    def visit(app: str) -> bool:
        for need in apps[app].needs:
            provider = providers.get(need)
            if provider == start:
                path.append(f"{start} (for {need})")
                return True
            if provider is not None and provider not in path and visit_through(provider, need):
                return True
        return False

    def visit_through(provider: str, need: str) -> bool:
        path.append(f"{provider} (for {need})")
        if visit(provider):
            return True
        path.pop()
        return False

    if visit(start):
        return f"{start} would need itself through other applications: {' -> '.join(path)}"
    return None
