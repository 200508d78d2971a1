"""`sealift-updater run`: bundles that appear in the watched directory are installed once, systemd
hears that the service is ready, and the media leave with the device's signed report, which the
office takes into its fleet database."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from securesystemslib.dsse import Envelope

from bundler.cli import cli as sealift
from tests.builders import only_app
from tests.envelope import result_of
from tests.realparts import DockerEngine
from updater.daemon import Daemon
from updater.docker_runtime import DockerRuntime
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.reports import REPORTS_FOLDER
from updater.trust import TrustedState

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]


@pytest.mark.docker
def test_a_pass_installs_what_arrived_once_tells_systemd_and_reports_on_the_media(releases: dict[str, Path], docker_engine: DockerEngine,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = tmp_path / "device"
    TrustedState(state_dir).init(releases["root"])
    media = tmp_path / "media"
    media.mkdir()
    shutil.copytree(releases["1.0.0"], media / releases["1.0.0"].name)
    (media / "notes.txt").write_text("not a bundle")
    (media / "half-copied").mkdir()  # a directory that is not (yet) a bundle
    (media / "office-stick" / REPORTS_FOLDER).mkdir(parents=True)  # a stick that only collects reports
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    lines: list[str] = []
    installer = Installer(state_dir=state_dir, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    (tmp_path / "record.json").write_text(json.dumps(installer.identity.enroll(site="plant-7", profile=CPU.name)))
    daemon = Daemon(installer, media, interval=1, metrics=tmp_path / "sealift.prom", log=lines.append)
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
        assert daemon.scan() == 0  # nothing new: nothing tried again (the reports it wrote are not news)
        # node-exporter's textfile, rewritten after the pass
        metrics = (tmp_path / "sealift.prom").read_text()
        assert 'sealift_release_info{app="vision-app",overlay="",slot="a",version="1.0.0"} 1.0' in metrics
        assert 'sealift_health_check_ok{app="vision-app",check="healthz",type="http",version="1.0.0"} 1.0' in metrics
        # each medium took the device's report, made once the install was done: the engine's view of what runs
        device = installer.identity.record()["device"]
        (report,) = (media / "office-stick" / REPORTS_FOLDER / device).iterdir()
        assert (media / releases["1.0.0"].name / REPORTS_FOLDER / device / report.name).read_bytes() == report.read_bytes()
        body = json.loads(Envelope.from_dict(json.loads(report.read_bytes())).payload)
        assert [(e["kind"], e["version"]) for e in body["events"]] == [("committed", "1.0.0")]
        services = body["apps"]["vision-app"]["services"]
        assert services and all(s["status"] == "running" and s["memory_bytes"] > 0 and s["cpu_seconds"] > 0
                                for s in services.values())
        # and at the office
        inventory, db = str(tmp_path / "devices.yaml"), str(tmp_path / "fleet.db")
        for args in (["devices", "add", str(tmp_path / "record.json"), "--inventory", inventory],
                     ["fleet", "import", str(media / "office-stick"), "--inventory", inventory, "--db", db]):
            result = CliRunner().invoke(sealift, [*args, "--json"])
            assert result.exit_code == 0, result.output
        assert result_of(result.stdout) == {"imported": 1, "duplicates": 0, "refused": []}
        result = CliRunner().invoke(sealift, ["fleet", "status", "--inventory", inventory, "--db", db, "--json"])
        assert result.exit_code == 0, result.output
        assert result_of(result.stdout)["running"] == {"plant-7 x86_64-cpu vision-app": {"1.0.0": 1}}
    finally:
        listener.close()
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)
