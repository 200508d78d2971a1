"""The ingress on the real engine with Debian's HAProxy: an application whose service publishes no
host port is reached through its route; an update, a rollback on demand and a release that never
turns healthy each switch with no failed request under continuous load on kept-alive connections;
an updater killed as it commits converges to one release that every request reaches; a second
application claiming the same route is refused before anything is staged."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import example_releases
from tests.ingress import HttpLoad, running_haproxy
from tests.realparts import DockerEngine
from updater.docker_runtime import DockerRuntime
from updater.errors import Conflict
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A device state directory with an ingress, HAProxy running from its configuration, and its port."""
    state, port = tmp_path / "device", free_port()
    with running_haproxy(state, port, log=tmp_path / "haproxy.log"):
        yield state, port


@pytest.mark.docker
def test_switches_behind_the_ingress_drop_no_request(tmp_path: Path, haproxy: tuple[Path, int],
                                                      docker_engine: DockerEngine) -> None:
    state, port = haproxy
    (tmp_path / "releases").mkdir()
    releases = example_releases(tmp_path / "releases", python=sys.executable, versions=("1.0.0", "1.1.0", "1.3.0"), routed=True,
                                also="twin")
    TrustedState(state).init(releases["root"])
    installer = Installer(state_dir=state, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    try:
        assert installer.install(releases["1.0.0"]).committed
        (container,) = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        assert not any(container.attrs["NetworkSettings"]["Ports"].values())  # no host port: only the ingress reaches it
        with HttpLoad("127.0.0.1", port) as load:
            time.sleep(0.5)
            update = installer.install(releases["1.1.0"])
            assert update.committed and update.release.slot == "b", update.reason
            back = installer.rollback()
            assert back.committed and back.release.version == "1.0.0", back.reason
            broken = installer.install(releases["1.3.0"])  # starts, never turns healthy: the routes never move to it
            assert not broken.committed and "failed" in broken.reason
            time.sleep(0.5)
        assert load.succeeded > 100 and load.failed == 0, f"{load.failed} of {len(load.done)} requests failed"
        serving = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        assert [c.labels["dev.sealift.version"] for c in serving] == ["1.0.0"]
        # killed just as it commits (the routes moved, the old release stopped or not): the next start
        # converges, and every request through the ingress succeeds again
        command = [sys.executable, "-c", "from updater.cli import main; main()", "--state-dir", str(state), "install",
                   str(releases["1.1.0"]), "--profile", "x86_64-cpu"]
        with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=docker_engine.env()) as proc:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("[7/7] commit"):
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(timeout=60)
        converged = installer.recover()["vision-app"]
        assert not isinstance(converged, Exception) and converged.current is not None and converged.candidate is None
        running = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        assert [c.labels["dev.sealift.slot"] for c in running] == [converged.current.slot]
        with HttpLoad("127.0.0.1", port) as after:
            time.sleep(1)
        assert after.succeeded > 20 and after.failed == 0, f"{after.failed} of {len(after.done)} failed after the recovery"
        with pytest.raises(Conflict, match=r"twin 1\.0\.0 cannot run beside the other applications: twin routes \*/, which "
                                           r"vision-app routes already"):
            installer.install(releases["twin-1.0.0"])
        assert not installer.apps.slots("twin").slot_dir("a").exists()
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)
