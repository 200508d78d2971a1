"""What applications provide and need on the device network (updater.devicenet): the Compose
file's top-level x-sealift, and the device's refusals of releases that cannot run beside the others."""

from __future__ import annotations

from typing import Any

import pytest

from updater.appdef import App, parse_app
from updater.devicenet import Provided, conflicts
from updater.errors import InputError
from updater.yamlfile import Field


def app(links: dict[str, Any] | None = None, services: tuple[str, ...] = ("web",)) -> App:
    data: dict[str, Any] = {"services": {name: {"image": "img"} for name in services}}
    if links is not None:
        data["x-sealift"] = links
    return parse_app(Field("compose.yaml", "app", data), images=("img",), mountable=(), secrets=())


def test_provides_and_needs_are_read_and_written_back_unchanged() -> None:
    parsed = app({"provides": {"mqtt": {"service": "web", "port": 1883}}, "needs": ["historian", "historian"]})
    assert parsed.provides == (Provided(name="mqtt", service="web", port=1883),) and parsed.needs == ("historian",)
    assert parsed.on_device_network and not app().on_device_network
    again = parse_app(Field("descriptor", "app", parsed.to_data()), images=("img",), mountable=(), secrets=())
    assert again == parsed


@pytest.mark.parametrize(("links", "message"), [
    ({"provides": {"mqtt": {"service": "broker", "port": 1883}}}, r"provides\.mqtt\.service: 'broker' is not a service of this "
                                                                  r"application \(services: web\)"),
    ({"provides": {"mqtt": {"service": "web", "port": 70000}}}, r"provides\.mqtt\.port: expected an integer from 1 to 65535"),
    ({"provides": {"web": {"service": "web", "port": 80}}}, r"'web' names a service of this application"),
    ({"provides": {"Bad Name": {"service": "web", "port": 80}}}, r"'Bad Name' is not a valid provided name"),
    ({"needs": ["web"]}, r"'web' is a name of this application's own"),
    ({"provides": {"mqtt": {"service": "web", "port": 1}}, "needs": ["mqtt"]}, r"'mqtt' is a name of this application's own"),
    ({"exposes": ["web"]}, r"x-sealift\.exposes: unknown field \(expected one of: needs, provides, routes\)"),
], ids=["unknown-service", "port-range", "provided-name-is-a-service", "bad-name", "needs-own-service", "needs-own-provided",
        "unknown-field"])
def test_bad_links_are_refused_naming_the_field(links: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        app(links)


BROKER = app({"provides": {"mqtt": {"service": "web", "port": 1883}}})
HISTORIAN = app({"provides": {"history": {"service": "web", "port": 8000}}, "needs": ["mqtt"]})


@pytest.mark.parametrize(("name", "wanted", "running", "message"), [
    ("camera", app({"needs": ["mqtt"]}), {}, "camera needs mqtt, which no other application on this device provides "
                                             "(they provide: nothing)"),
    ("broker2", BROKER, {"broker": BROKER}, "broker2 provides mqtt, which broker provides already"),
    ("broker", app({"provides": {"mqtt": {"service": "web", "port": 1883}}, "needs": ["history"]}),
     {"broker": BROKER, "historian": HISTORIAN},
     "broker would need itself through other applications: broker -> historian (for history) -> broker (for mqtt)"),
    ("broker", app(), {"broker": BROKER, "historian": HISTORIAN}, "historian needs mqtt, which broker provides now and would "
                                                                 "no longer"),
], ids=["unmet-need", "provided-twice", "circle", "provides-no-longer"])
def test_a_release_that_cannot_run_beside_the_others_says_why(name: str, wanted: App, running: dict[str, App],
                                                               message: str) -> None:
    assert conflicts(name, wanted, running) == message


def test_a_release_that_fits_has_no_conflict() -> None:
    assert conflicts("historian", HISTORIAN, {"broker": BROKER}) is None
    assert conflicts("broker", BROKER, {"broker": app(), "historian": HISTORIAN}) is None  # its own running release does not count
