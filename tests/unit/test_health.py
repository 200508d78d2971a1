"""Health checks reach a service where its port is published: on the address it is bound to (a
service published on one interface only, e.g. an OT network's), or on loopback when it is bound to
every address."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from updater.appdef import Check, CheckType, HealthPolicy
from updater.health import wait_healthy


class _Container:
    """What the checks read of a docker SDK container: ``attrs`` (after ``reload()``) and ``labels``."""

    def __init__(self, host_ip: str, port: int, *, also: tuple[dict[str, str], ...] = ()) -> None:
        self.labels: dict[str, str] = {}
        bindings = [*also, {"HostIp": host_ip, "HostPort": str(port)}]
        self.attrs: dict[str, Any] = {"State": {"Status": "running"}, "RestartCount": 0,
                                      "NetworkSettings": {"Ports": {"8080/tcp": bindings}}}

    def reload(self) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    """An HTTP server answering 200 on 127.0.0.5 only."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.5", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.5", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


CHECKS = HealthPolicy(checks=(Check(name="healthz", type=CheckType.HTTP, service="web", port=8080, path="/healthz"),
                              Check(name="port", type=CheckType.TCP, service="web", port=8080)), deadline=1.0, stabilisation=0.0)


def test_checks_reach_a_port_on_the_address_it_is_published_on(server: tuple[str, int], tmp_path: Path) -> None:
    host, port = server
    assert wait_healthy(lambda: {"web": _Container(host, port)}, CHECKS, tmp_path).ok
    # published on both families, each with its own port: the IPv4 binding is the one checked
    ipv6 = ({"HostIp": "::", "HostPort": "9"},)
    assert wait_healthy(lambda: {"web": _Container(host, port, also=ipv6)}, CHECKS, tmp_path).ok
    # bound to every address, it is reached on loopback, where this server does not listen: the check fails
    failed = wait_healthy(lambda: {"web": _Container("0.0.0.0", port)}, CHECKS, tmp_path, sleep=lambda _: None)
    assert not failed.ok and failed.check in ("healthz", "port") and "Connection refused" in failed.detail
