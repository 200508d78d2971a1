"""Two applications on one device, on the real engine, driven through the CLI: a device of the
single-application layout is moved in place while its release runs (the engine restarts its
container through the old path); a second application, which needs what the first provides,
installs beside it and reaches it by name on the device network; updating and rolling back one
never interrupts the other, one is updated while the other is rolled back, and the names hold;
each application is signed by its team's delegated role; `status` lists both. The updater killed
at each step of one application's install: every application converges to one healthy release,
and the other is never restarted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import pytest
from docker.models.containers import Container

from tests.builders import FAST_PORT, example_releases, healthz, updater_killed_at
from tests.envelope import result_of
from tests.realparts import DockerEngine
from updater.application import staged
from updater.docker_runtime import DockerRuntime
from updater.errors import InputError
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]
SECOND = "vision-b"


def updater(state: Path, engine: DockerEngine, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from updater.cli import main; main()", "--state-dir", str(state), *args]
    return subprocess.run(command, capture_output=True, text=True, env=engine.env(), timeout=300, check=False)


class Prober(threading.Thread):
    """Asks a service's /healthz every 20 ms until stopped; counts the requests that failed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.asked = self.failed = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.asked += 1
            try:
                ok = healthz(self.port, wait=0) == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                ok = False
            self.failed += not ok
            time.sleep(0.02)


def _as_single_application_layout(installer: Installer, state: Path) -> None:
    """What a device of the single-application layout holds: state.json and slots/ at the top, and the
    running release's containers mounting files from under STATE/slots."""
    current = installer.apps.slots("vision-app").load().current
    assert current is not None
    installer.runtime.stop("vision-app", current.slot)
    (state / "apps/vision-app/state.json").rename(state / "state.json")
    (state / "apps/vision-app/slots").rename(state / "slots")
    shutil.rmtree(state / "apps")
    descriptor = staged(state / "slots" / current.slot)
    installer.runtime.start(current, descriptor.app, state / "slots" / current.slot, {i.name: i.config for i in descriptor.images})


def reaches(container: Container) -> None:
    """``container`` reaches vision-app's service by both its names on the device network, with no host
    port. (The image's static busybox cannot resolve names through libc, so its own resolver,
    nslookup, asks the engine's DNS, and wget goes to the address it answers.)"""
    for name in ("detector", "vision.vision-app"):
        code, output = container.exec_run(["/bin/busybox", "nslookup", name])
        answers = re.findall(r"Address:\s*([0-9.]+)\s*$", output.decode(), flags=re.MULTILINE)
        assert code == 0 and answers and answers[-1] != "127.0.0.11", f"{name}: {output!r}"
        code, output = container.exec_run(["wget", "-q", "-O-", f"http://{answers[-1]}:8080/healthz"])
        assert code == 0 and b"ok" in output, f"{name} ({answers[-1]}): {output!r}"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """vision-app and vision-b, 1.0.0 and 1.1.0 each, signed by a delegated role per application."""
    return example_releases(tmp_path_factory.mktemp("releases"), python=sys.executable, versions=("1.0.0", "1.1.0"), also=SECOND)


@pytest.mark.docker
def test_two_applications_live_side_by_side(tmp_path: Path, releases: dict[str, Path], docker_engine: DockerEngine) -> None:
    state = tmp_path / "device"
    TrustedState(state).init(releases["root"])
    installer = Installer(state_dir=state, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    try:
        assert installer.install(releases["1.0.0"]).committed
        _as_single_application_layout(installer, state)
        assert healthz(FAST_PORT) == 200

        # (1) the first start moves the state in place; the running container is left running, and the
        # engine can still restart it through the old path
        recovered = updater(state, docker_engine, "recover")
        assert recovered.returncode == 0 and recovered.stdout == "vision-app: running vision-app 1.0.0 (slot a): serving\n"
        assert (state / "slots").is_symlink() and not (state / "state.json").exists()
        (container,) = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        container.restart(timeout=5)
        assert healthz(FAST_PORT) == 200

        # (2) a second application beside it
        second = updater(state, docker_engine, "install", str(releases[f"{SECOND}-1.0.0"]), "--profile", "x86_64-cpu", "--json")
        assert second.returncode == 0 and result_of(second.stdout)["release"]["name"] == SECOND, second.stderr
        (other,) = docker_engine.client.containers.list(filters={"label": f"dev.sealift.app={SECOND}"})
        started = other.attrs["State"]["StartedAt"]
        reaches(other)  # the first application, by its names on the device network

        # (3) vision-app is updated; vision-b answers every request meanwhile
        prober = Prober(FAST_PORT + 1)
        prober.start()
        try:
            update = updater(state, docker_engine, "install", str(releases["1.1.0"]), "--profile", "x86_64-cpu")
            assert update.returncode == 0, update.stderr
            assert not (state / "slots").exists()  # vision-app switched: nothing mounts through the old path any more
        finally:
            prober.done.set()
            prober.join()
        assert prober.asked > 20 and prober.failed == 0, f"{prober.failed} of {prober.asked} requests to {SECOND} failed"
        other.reload()
        assert other.attrs["State"]["StartedAt"] == started and other.status == "running"
        reaches(other)  # the names held across the update of the application behind them

        # (4) vision-b is updated while vision-app is rolled back, at the same time
        unnamed = updater(state, docker_engine, "rollback")
        assert unnamed.returncode == InputError.exit_code and "holds 2 applications (vision-app, vision-b); name one" in unnamed.stderr
        command = [sys.executable, "-c", "from updater.cli import main; main()", "--state-dir", str(state), "install",
                   str(releases[f"{SECOND}-1.1.0"]), "--profile", "x86_64-cpu"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=docker_engine.env()) as other_update:
            back = updater(state, docker_engine, "rollback", "vision-app", "--json")
            _, other_err = other_update.communicate(timeout=300)
        assert back.returncode == 0 and result_of(back.stdout)["release"]["version"] == "1.0.0", back.stderr
        assert other_update.returncode == 0, other_err
        (other,) = docker_engine.client.containers.list(filters={"label": f"dev.sealift.app={SECOND}"})
        assert other.labels["dev.sealift.version"] == "1.1.0"
        reaches(other)  # and across updates of both sides

        # (5) status lists both, each serving; each was verified through its own team's role
        status = updater(state, docker_engine, "status", "--json")
        apps = result_of(status.stdout)["apps"]
        assert status.returncode == 0 and sorted(apps) == ["vision-app", SECOND]
        assert apps["vision-app"]["current"]["version"] == "1.0.0" and apps["vision-app"]["previous"]["version"] == "1.1.0"
        assert apps[SECOND]["current"]["version"] == "1.1.0" and apps[SECOND]["previous"]["version"] == "1.0.0"
        assert all(app["serving"]["ok"] for app in apps.values())
        text = updater(state, docker_engine, "status", SECOND).stdout
        assert text.startswith(f"{SECOND}\n  running: 1.1.0 (slot b)\n") and "vision-app" not in text.split("device:")[0]
        assert (state / "trust" / "team-vision.json").is_file() and (state / "trust" / f"team-{SECOND}.json").is_file()
    finally:
        for name in ("vision-app", SECOND):
            for container in docker_engine.client.containers.list(all=True, filters={"label": f"dev.sealift.app={name}"}):
                container.remove(force=True)


@pytest.mark.docker
def test_killed_at_any_step_of_one_applications_install_every_application_converges(
        tmp_path: Path, releases: dict[str, Path], docker_engine: DockerEngine) -> None:
    state = tmp_path / "device"
    TrustedState(state).init(releases["root"])
    installer = Installer(state_dir=state, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    try:
        assert installer.install(releases["1.0.0"]).committed
        assert installer.install(releases[f"{SECOND}-1.0.0"]).committed
        (bystander,) = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        started = bystander.attrs["State"]["StartedAt"]
        for step in range(1, 8):
            killed = updater_killed_at(state, ["install", str(releases[f"{SECOND}-1.1.0"]), "--profile", "x86_64-cpu", "--force"],
                                       f"[{step}/7]", env=docker_engine.env())
            assert killed, f"the install finished before step {step}"
            recovered = updater(state, docker_engine, "recover")
            assert recovered.returncode == 0, f"step {step}: {recovered.stdout}{recovered.stderr}"
            for name, port in (("vision-app", FAST_PORT), (SECOND, FAST_PORT + 1)):
                now = installer.apps.slots(name).load()
                assert now.current is not None and now.candidate is None, f"step {step}: {name}: {now.reason}"
                running = docker_engine.client.containers.list(filters={"label": f"dev.sealift.app={name}"})
                assert [c.labels["dev.sealift.slot"] for c in running] == [now.current.slot], f"step {step}: {name}"
                assert healthz(port) == 200, f"step {step}: {name}"
            bystander.reload()
            assert bystander.attrs["State"]["StartedAt"] == started, f"step {step}: vision-app was restarted"
            if installer.apps.slots(SECOND).load().current.version == "1.1.0":  # type: ignore[union-attr]
                assert installer.rollback(SECOND).committed  # the next round installs 1.1.0 again
    finally:
        for name in ("vision-app", SECOND):
            for container in docker_engine.client.containers.list(all=True, filters={"label": f"dev.sealift.app={name}"}):
                container.remove(force=True)
