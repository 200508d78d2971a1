"""Routes (updater.routes) and the ingress's configuration (updater.ingress): what a Compose file may
declare, which application may claim a route, and what HAProxy is told. The switch itself runs
against Debian's HAProxy in tests/integration/test_ingress.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from updater.appdef import App, parse_app
from updater.errors import InputError
from updater.ingress import Ingress, Placement
from updater.routes import Route, route_clash
from updater.yamlfile import Field


def app(routes: list[dict[str, Any]]) -> App:
    data = {"services": {"web": {"image": "img"}, "api": {"image": "img"}}, "x-sealift": {"routes": routes}}
    return parse_app(Field("compose.yaml", "app", data), images=("img",), mountable=(), secrets=())


def test_routes_are_read_with_their_defaults_and_written_back_unchanged() -> None:
    parsed = app([{"service": "web", "port": 80}, {"host": "vision.plant.example", "path": "/api/", "service": "api", "port": 8080}])
    assert parsed.routes == (Route(host=None, path="/", service="web", port=80),
                             Route(host="vision.plant.example", path="/api", service="api", port=8080))
    assert parse_app(Field("descriptor", "app", parsed.to_data()), images=("img",), mountable=(), secrets=()) == parsed


@pytest.mark.parametrize(("routes", "message"), [
    ([{"service": "db", "port": 80}], r"routes\[0\]\.service: 'db' is not a service of this application"),
    ([{"host": "Vision.Example", "service": "web", "port": 80}], r"routes\[0\]\.host: expected a host name in lower case"),
    ([{"path": "api", "service": "web", "port": 80}], r"routes\[0\]\.path: expected a path prefix such as /api"),
    ([{"path": "/a b", "service": "web", "port": 80}], r"routes\[0\]\.path: expected a path prefix"),
    ([{"service": "web", "port": 80}, {"path": "/", "service": "api", "port": 81}], r"routes\[1\]: route \*/ is declared twice"),
    ([{"service": "web"}], r"routes\[0\]\.port: is required"),
], ids=["unknown-service", "upper-case-host", "relative-path", "space-in-path", "twice", "no-port"])
def test_bad_routes_are_refused_naming_the_field(routes: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InputError, match=message):
        app(routes)


def test_a_route_another_application_claims_is_a_clash_its_own_is_not() -> None:
    mine = app([{"host": "a.example", "service": "web", "port": 80}])
    assert route_clash("cam", mine, {"vision": mine}) == "cam routes a.example/, which vision routes already"
    assert route_clash("vision", mine, {"vision": mine}) is None
    assert route_clash("cam", app([{"host": "b.example", "service": "web", "port": 80}]), {"vision": mine}) is None


def test_the_configuration_tries_host_routes_first_then_the_longest_path(tmp_path: Path) -> None:
    ingress = Ingress(tmp_path)
    ingress.init(port=8080, address="127.0.0.1")
    routes = app([{"service": "web", "port": 80}, {"path": "/api/v2", "service": "api", "port": 81},
                  {"host": "a.example", "service": "web", "port": 80}]).routes
    text = ingress.render([Placement(app="vision", routes=routes, slot="b", addresses={"b": {"web": "172.18.0.5"}})])
    rules = [line.strip() for line in text.splitlines() if line.strip().startswith(("use_backend", "default_backend"))]
    assert rules == ["use_backend vision:web:80 if { req.hdr(host),field(1,:) -i a.example }",
                     "use_backend vision:api:81 if { path_beg /api/v2 }", "use_backend vision:web:80",
                     "default_backend no-route"]
    assert "    bind 127.0.0.1:8080" in text
    web = text.split("\nbackend vision:web:80\n")[1].splitlines()[:2]
    assert web == ["    server a 127.0.0.1:9 disabled", "    server b 172.18.0.5:80"]  # only the active slot takes requests
    assert "    server b 127.0.0.1:9 disabled" in text.split("\nbackend vision:api:81\n")[1]  # api has no address yet


def test_an_ingress_port_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ingress port 0: expected 1 to 65535"):
        Ingress(tmp_path).init(port=0)


def tls_app(routes: list[dict[str, Any]]) -> App:
    data = {"services": {"web": {"image": "img"}}, "x-sealift": {"routes": routes}}
    return parse_app(Field("compose.yaml", "app", data), images=("img",), mountable=(), secrets=("cert", "key", "other"))


@pytest.mark.parametrize(("routes", "message"), [
    ([{"service": "web", "port": 80, "tls": {"certificate": "cert", "key": "key"}}], r"tls: needs the route's host"),
    ([{"host": "a.example", "service": "web", "port": 80, "tls": {"certificate": "nope", "key": "key"}}],
     r"tls\.certificate: 'nope' is not a declared secret"),
    ([{"host": "a.example", "service": "web", "port": 80, "tls": {"certificate": "cert", "key": "key"}},
      {"host": "a.example", "path": "/x", "service": "web", "port": 80, "tls": {"certificate": "other", "key": "key"}}],
     r"host a\.example has another certificate in an earlier route"),
], ids=["no-host", "undeclared-secret", "two-certificates"])
def test_bad_tls_is_refused_naming_the_field(routes: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InputError, match=message):
        tls_app(routes)


def test_a_tls_route_is_served_over_https_from_a_certificate_in_memory(tmp_path: Path) -> None:
    ingress = Ingress(tmp_path)
    ingress.init(port=8080, tls_port=8443)
    routes = tls_app([{"host": "a.example", "service": "web", "port": 80, "tls": {"certificate": "cert", "key": "key"}}]).routes
    assert routes[0].tls == ("cert", "key") and routes[0].to_data()["tls"] == {"certificate": "cert", "key": "key"}
    placement = Placement(app="vision", routes=routes, slot="a", addresses={"a": {"web": "172.18.0.5"}},
                          certificates={"a.example": tmp_path / "run/vision-a/.ingress/a.example.pem"})
    assert "ingress-tls" not in ingress.render([placement])  # its certificate is not open: no HTTPS for it
    ingress.certificate_path("vision", "a.example").parent.mkdir(parents=True)
    ingress.certificate_path("vision", "a.example").write_bytes(b"PEM")
    text = ingress.render([placement])
    assert f"    bind :8443 ssl crt {tmp_path}/run/ingress/vision/a.example.pem" in text.splitlines()
    tls_rules = text.split("frontend ingress-tls\n")[1].split("\nbackend ")[0]
    assert "use_backend vision:web:80 if { req.hdr(host),field(1,:) -i a.example }" in tls_rules
    plain = Ingress(tmp_path / "plain")
    plain.init(port=80)
    assert "ingress-tls" not in plain.render([placement])  # an ingress with no TLS port serves no HTTPS
