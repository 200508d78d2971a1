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

from tests.fakes import FakeEngine
from updater.health import Watched, wait_healthy
from updater.healthpolicy import Check, CheckType, HealthPolicy
from updater.runtime import ContainerState, Published


class _Engine(FakeEngine):
    """One service, ``web``, running with its port 8080 published at ``bindings``."""

    def __init__(self, *bindings: tuple[str, int]) -> None:
        super().__init__()
        self.bindings = tuple(Published(host, port) for host, port in bindings)

    def containers(self, app: str, slot: str) -> dict[str, ContainerState]:
        return {"web": ContainerState(service="web", status="running", ports={"8080/tcp": self.bindings})}


def watched(engine: _Engine, tmp_path: Path) -> Watched:
    return Watched(runtime=engine, app="demo", slot="a", slot_dir=tmp_path)


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
    assert wait_healthy(watched(_Engine((host, port)), tmp_path), CHECKS).ok
    # published on both families, each with its own port: the IPv4 binding is the one checked
    assert wait_healthy(watched(_Engine(("::", 9), (host, port)), tmp_path), CHECKS).ok
    # bound to every address, it is reached on loopback, where this server does not listen: the check fails
    failed = wait_healthy(watched(_Engine(("0.0.0.0", port)), tmp_path), CHECKS, sleep=lambda _: None)
    assert not failed.ok and failed.check in ("healthz", "port") and "Connection refused" in failed.detail
