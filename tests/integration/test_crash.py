"""Crash safety on the real engine: the updater is SIGKILLed at the start of every install step;
on its next start it converges to a release that runs and answers, and the running slot's files
are never touched. Also: rollback on demand, and the committed release coming back after the
engine lost its containers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.builders import healthz, only_app, updater_killed_at
from tests.realparts import DockerEngine
from updater.docker_runtime import DockerRuntime
from updater.errors import Conflict, Refused
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.slots import Phase
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]


def files_of(slot: Path) -> dict[str, str]:
    return {str(p.relative_to(slot)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(slot.rglob("*")) if p.is_file()}


@pytest.fixture
def device(releases: dict[str, Path], docker_engine: DockerEngine, tmp_path: Path):  # type: ignore[no-untyped-def]
    state_dir = tmp_path / "device"
    TrustedState(state_dir).init(releases["root"])
    installer = Installer(state_dir=state_dir, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    assert installer.install(releases["1.0.0"]).committed
    yield installer
    for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
        container.remove(force=True)


def running_slots(engine: DockerEngine) -> set[str]:
    containers = engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
    return {c.labels["dev.sealift.slot"] for c in containers}


@pytest.mark.docker
@pytest.mark.parametrize("step", range(1, 8))
def test_killed_at_any_step_the_device_converges(step: int, device: Installer, releases: dict[str, Path],
                                                 docker_engine: DockerEngine) -> None:
    slot_a = only_app(device.state_dir).slot_dir("a")
    before = files_of(slot_a)
    killed = updater_killed_at(device.state_dir, ["install", str(releases["1.1.0"]), "--profile", "x86_64-cpu"], f"[{step}/7]",
                               env=docker_engine.env())
    assert killed, f"the install finished before step {step}"

    state = device.app("vision-app").recover()  # the updater's next start
    assert state.phase in (Phase.COMMITTED, Phase.ROLLED_BACK)
    assert state.current is not None and running_slots(docker_engine) == {state.current.slot}
    assert healthz() == 200
    assert files_of(slot_a) == before  # the release that was running kept every byte


@pytest.mark.docker
def test_rollback_on_demand_and_after_the_engine_lost_the_containers(device: Installer, releases: dict[str, Path],
                                                                    docker_engine: DockerEngine) -> None:
    assert device.install(releases["1.1.0"]).committed
    back = device.rollback()
    assert back.committed and back.release.version == "1.0.0"
    state = only_app(device.state_dir).load()
    assert state.current is not None and state.current.slot == "a" and state.previous is not None and state.previous.version == "1.1.0"
    for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
        container.remove(force=True)  # as after a reboot that lost them
    device.recover()
    assert running_slots(docker_engine) == {"a"} and healthz() == 200
    assert not device.install(releases["1.2.0"]).committed  # staged over the previous release's slot, then rolled back
    with pytest.raises(Conflict, match="no previous release to roll back to"):
        device.rollback()


@pytest.mark.docker
def test_a_release_the_engine_cannot_start_is_rolled_back(device: Installer, releases: dict[str, Path],
                                                          docker_engine: DockerEngine) -> None:
    outcome = device.install(releases["1.2.0"])
    assert not outcome.committed and outcome.reason.startswith("start failed: ") and outcome.fault == "engine"
    assert "vision-app 1.2.0: the engine could not start it" in outcome.reason
    state = only_app(device.state_dir).load()
    assert state.current is not None and state.current.version == "1.0.0" and "start failed" in state.reason
    assert state.fault == "engine"
    assert running_slots(docker_engine) == {"a"} and healthz() == 200


@pytest.mark.docker
def test_refusals_and_failures_leave_the_previous_release_and_say_why(device: Installer, releases: dict[str, Path],
                                                                       docker_engine: DockerEngine) -> None:
    nvidia_device = Installer(state_dir=device.state_dir, runtime=DockerRuntime(docker_engine.client),
                              profile=PROFILES["x86_64-nvidia"])
    with pytest.raises(Refused, match="is for profile x86_64-cpu, this device is x86_64-nvidia"):
        nvidia_device.install(releases["1.1.0"])
    state = only_app(device.state_dir).load()
    assert state.reason.startswith("refused: vision-app-1.1.0-x86_64-cpu: ") and "x86_64-nvidia" in state.reason
    assert state.fault == "refused"
    assert state.current is not None and state.current.version == "1.0.0" and healthz() == 200

    exits = device.install(releases["1.4.0"])  # its server exits at once; the engine keeps restarting it
    assert not exits.committed and exits.fault == "unhealthy"
    state = only_app(device.state_dir).load()
    assert state.fault == "unhealthy" and state.phase == Phase.ROLLED_BACK
    assert state.current is not None and state.current.version == "1.0.0"
    assert "failed" in state.reason and running_slots(docker_engine) == {"a"} and healthz() == 200


@pytest.mark.docker
def test_a_corrupt_bundle_is_refused_before_anything_changes(device: Installer, releases: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / releases["1.1.0"].name
    shutil.copytree(releases["1.1.0"], copy)
    # a blob the running release lacks (one it has is taken from the device's own store, never read here)
    running = {p.name for p in (releases["1.0.0"] / "blobs/sha256").iterdir()}
    biggest = max((p for p in (copy / "blobs/sha256").iterdir() if p.name not in running), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    slot_b = only_app(device.state_dir).slot_dir("b")
    with pytest.raises(Refused, match=f"blob sha256:{biggest.name} does not match its digest"):
        device.install(copy)
    state = only_app(device.state_dir).load()
    assert state.reason.startswith(f"refused: {copy.name}: ") and state.fault == "refused"
    assert state.current is not None and state.current.version == "1.0.0"
    assert not slot_b.exists() and healthz() == 200
