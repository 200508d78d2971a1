"""`sealift-updater run`: bundles that appear in the watched directory are installed once, and
systemd hears that the service is ready."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.builders import only_app
from tests.realparts import DockerEngine
from updater.daemon import Daemon
from updater.docker_runtime import DockerRuntime
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]


@pytest.mark.docker
def test_a_pass_installs_what_arrived_once_and_tells_systemd(releases: dict[str, Path], docker_engine: DockerEngine,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = tmp_path / "device"
    TrustedState(state_dir).init(releases["root"])
    media = tmp_path / "media"
    media.mkdir()
    shutil.copytree(releases["1.0.0"], media / releases["1.0.0"].name)
    (media / "notes.txt").write_text("not a bundle")
    (media / "half-copied").mkdir()  # a directory that is not (yet) a bundle
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    lines: list[str] = []
    installer = Installer(state_dir=state_dir, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    daemon = Daemon(installer, media, interval=1, log=lines.append)
    try:
        daemon.run(once=True)
        messages = []
        while True:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                break
            listener.settimeout(0.2)
        # ready once the loop is up, before the install; then each step of it, then the pass done
        assert messages[0] == "READY=1\nSTATUS=running nothing; looking for updates", messages
        assert any(m.startswith("WATCHDOG=1\nSTATUS=[6/7] health checks") for m in messages[1:]), messages
        assert messages[-1].startswith("WATCHDOG=1\nSTATUS=running vision-app 1.0.0; next look in "), messages
        state = only_app(state_dir).load()
        assert state.current is not None and state.current.version == "1.0.0"
        assert any(line.startswith('event="committed"') for line in lines)
        assert daemon.scan() == 0  # nothing new: nothing tried again
    finally:
        listener.close()
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)
