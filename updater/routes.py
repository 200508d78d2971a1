"""Routes: how the site reaches an application's services, through the device's ingress.

An application declares its routes at the top of its Compose file, the same at every site::

    x-sealift:
      routes:
        - {host: vision.plant.example, path: /api, service: vision, port: 8080,
           tls: {certificate: site-cert, key: site-key}}
        - {path: /, service: ui, port: 80}

A request whose Host is ``host`` (any host when it is left out) and whose path starts with
``path`` (default ``/``) goes to ``service`` on ``port``; routes with a host are tried before those
without, and among them the longest path first. A route with ``tls`` is served over HTTPS too, with
the certificate (PEM, the chain after it) and key that two of the release's secrets hold: they
travel sealed in the site's overlay, so each site has its own. Routes are checked when the bundle is built (their service exists, no
two are the same) and again on the device, where two applications may not claim the same route
(:func:`route_clash`). The ingress that serves them is :mod:`updater.ingress`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from updater.yamlfile import Field, check_known

if TYPE_CHECKING:
    from updater.appdef import App

__all__ = ["Route", "parse_routes", "route_clash"]

_HOST = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,200}")


@dataclass(frozen=True)
class Route:
    """Requests for ``host`` (None: any) under the path prefix ``path``, to ``service`` on ``port``; over
    HTTPS too when ``tls`` names the secrets holding the certificate and the key."""

    host: str | None
    path: str
    service: str
    port: int
    tls: tuple[str, str] | None = None  # (certificate secret, key secret)

    def __str__(self) -> str:
        return f"{self.host or '*'}{self.path}"

    def to_data(self) -> dict[str, Any]:
        tls = {"tls": {"certificate": self.tls[0], "key": self.tls[1]}} if self.tls else {}
        return {**({"host": self.host} if self.host else {}), "path": self.path, "service": self.service, "port": self.port,
                **tls}


def parse_routes(field: Field, services: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[Route, ...]:
    """The routes a Compose file's ``x-sealift.routes`` declares (``secrets``: the release's secrets)."""
    routes: list[Route] = []
    for item in field.items():
        f = item.mapping(required=("service", "port"), optional=("host", "path", "tls"))
        service = f["service"].string(what="the name of a service")
        if service not in services:
            raise f["service"].error(f"{service!r} is not a service of this application (services: {', '.join(services)})")
        host = f["host"].string(pattern=_HOST, what="a host name in lower case (vision.plant.example)") if "host" in f else None
        path = f["path"].string(pattern=_PATH, what="a path prefix such as /api") if "path" in f else "/"
        tls = None
        if "tls" in f:
            if host is None:
                raise f["tls"].error("needs the route's host: a client names it to get its certificate")
            t = f["tls"].mapping(required=("certificate", "key"))
            tls = (check_known(t["certificate"], secrets, what="secret (a `secrets` entry)"),
                   check_known(t["key"], secrets, what="secret (a `secrets` entry)"))
        route = Route(host=host, path=path.rstrip("/") or "/", service=service, port=f["port"].integer(low=1, high=65535),
                      tls=tls)
        if any(str(r) == str(route) for r in routes):
            raise item.error(f"route {route} is declared twice")
        if any(r.host == host and r.tls and tls and r.tls != tls for r in routes):
            raise item.error(f"host {host} has another certificate in an earlier route; a host has one")
        routes.append(route)
    return tuple(routes)


def route_clash(name: str, app: App, running: Mapping[str, App]) -> str | None:
    """Which route of ``app`` another application's running release claims too, said as one line; or None."""
    claimed = {str(r): other for other, theirs in running.items() if other != name for r in theirs.routes}
    for route in app.routes:
        if str(route) in claimed:
            return f"{name} routes {route}, which {claimed[str(route)]} routes already"
    return None
