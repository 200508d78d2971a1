"""A staged rollout on real parts: three devices, each with its own Docker engine, polling one real
registry. A canary installs a release that fails its health checks, reports back, `sealift rollout
check` halts the rollout and publishes the halt, and the two others never install it (nor download
it); a good release then goes through all three waves, the last one waiting for its site's
maintenance window by a controllable clock, not by sleeping; halted after all, it is left by every
device at its next poll."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundler.cli import cli as sealift_cli
from bundler.devices import Inventory
from bundler.fleet import FleetDatabase
from bundler.keys import Keyring
from bundler.publish import push
from bundler.repo import Repository
from tests.builders import example_releases
from tests.envelope import result_of
from tests.realparts import Registry, start_docker_engine
from updater.daemon import Daemon
from updater.docker_runtime import DockerRuntime
from updater.identity import DeviceIdentity
from updater.install import Installer
from updater.poll import RegistryPoller
from updater.profiles import builtin_profile_dir, load_profiles
from updater.reports import Reports
from updater.trust import TrustedState

pytestmark = [pytest.mark.docker, pytest.mark.registry]

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]
PASS = "test passphrase"


class Clock:
    """A device's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class Device:
    """One device: its state directory, its own engine, a daemon polling the registry, its log."""

    def __init__(self, root: Path, name: str, *, site: str, engine: Any, source: str, inventory: Path, trusted_root: Path) -> None:
        self.name = name
        self.state = root / name
        TrustedState(self.state).init(trusted_root)
        record = DeviceIdentity(self.state).enroll(site=site, profile=CPU.name)
        self.id = str(record["device"])
        (root / f"{name}.json").write_text(json.dumps(record))
        Inventory(inventory).add(root / f"{name}.json")
        self.lines: list[str] = []
        self.installer = Installer(state_dir=self.state, runtime=DockerRuntime(engine.client), profile=CPU, log=self.lines.append)
        self.clock = Clock()
        self.installer.trust.now = self.clock
        poller = RegistryPoller(source, installer=self.installer, profile=CPU, plain_http=True)
        self.daemon = Daemon(self.installer, None, pollers=[poller], interval=1, log=self.lines.append)

    def run(self) -> str:
        """One pass of the service; what it logged."""
        start = len(self.lines)
        assert self.daemon.run(once=True) is None, self.lines[start:]
        return "\n".join(self.lines[start:])

    @property
    def running(self) -> str:
        current = self.installer.apps.states()["vision-app"].current
        assert current is not None
        return current.version


@pytest.fixture
def engines() -> Iterator[list[Any]]:
    with ExitStack() as stack:
        yield [stack.enter_context(start_docker_engine()) for _ in range(3)]


def test_a_failing_canary_halts_the_rollout_and_a_good_release_goes_through_every_wave(
        tmp_path: Path, registry: Registry, engines: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALIFT_KEY_PASSPHRASE", PASS)
    # releases with no host port (three engines share this host): 1.0.0 and 1.5.0 healthy, 1.3.0 never healthy
    (tmp_path / "releases").mkdir()
    releases = example_releases(tmp_path / "releases", python=sys.executable, routed=True, versions=("1.0.0", "1.1.0", "1.3.0"),
                                renamed={"1.1.0": "1.5.0"})
    office = tmp_path / "releases" / "signing"
    repo = Repository(office / "repo", Keyring(office / "keys", passphrase=lambda: PASS))
    repo.init_rollout()
    source = f"{registry.address}/rollout-vision"
    inventory, db, medium = tmp_path / "devices.yaml", tmp_path / "fleet.db", tmp_path / "usb"
    medium.mkdir()
    devices = [Device(tmp_path, f"d{i}", site=f"plant-{i}", engine=engines[i - 1], source=source, inventory=inventory,
                      trusted_root=releases["root"]) for i in (1, 2, 3)]
    d1, d2, d3 = devices
    keys = ["--keys", str(office / "keys")]
    fleet = ["--db", str(db), "--inventory", str(inventory)]

    def sealift(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(sealift_cli, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return result_of(result.stdout)  # type: ignore[no-any-return]

    def deliver(version: str) -> None:
        repo.add([releases[version]])  # the bundle takes the repository's current metadata (its plan with it)
        push(releases[version], source, plain_http=True)

    def report_back() -> None:
        for device in devices:
            Reports(device.installer).make()
            Reports(device.installer).to_medium(medium)
        FleetDatabase(db).import_medium(medium, Inventory(inventory))

    # (1) 1.0.0 has no plan: every device installs it
    deliver("1.0.0")
    for device in devices:
        assert 'event="committed"' in device.run() and device.running == "1.0.0"

    # (2) 1.3.0, canary d1 first: it installs, fails its health checks and rolls back; the others wait, not downloading it
    plan = tmp_path / "plan-1.3.0.yaml"
    plan.write_text(f"app: vision-app\nversion: 1.3.0\nfailure_threshold: 10%\nwaves:\n  - {{name: canary, devices: [{d1.id}]}}\n"
                    "  - {name: rest, percent: 100}\n")
    sealift("rollout", "plan", str(repo.directory), str(plan), *keys, "--inventory", str(inventory))
    deliver("1.3.0")
    assert 'event="rolled-back"' in d1.run() and d1.running == "1.0.0"
    bad = json.loads((releases["1.3.0"] / "index.json").read_text())["manifests"][0]["digest"]
    for device in (d2, d3):
        said = device.run()
        assert 'event="deferred"' in said and "wave rest (2 of 2) of the rollout of vision-app 1.3.0 has not started" in said
        assert device.running == "1.0.0" and not device.installer.store.has(bad)
        status = device.installer.apps.states()["vision-app"]
        assert status.fault == "deferred" and "vision-app 1.3.0 waits" in status.reason
    report_back()
    checked = sealift("rollout", "check", str(repo.directory), *keys, *fleet, "--publish", source, "--plain-http")
    assert [h["version"] for h in checked["halted"]] == ["1.3.0"] and checked["published"]
    status = sealift("rollout", "status", str(repo.directory), "vision-app", "1.3.0", *fleet)
    assert [(w["name"], w["failed"], w["waiting"]) for w in status["waves"]] == [("canary", 1, 0), ("rest", 0, 2)]
    for device in (d2, d3):  # the halt reaches them through the registry: they never install 1.3.0
        said = device.run()
        assert "the rollout of vision-app 1.3.0 is halted: wave canary: 1 of 1 devices" in said, said
        assert device.running == "1.0.0" and not device.installer.store.has(bad)
    assert CliRunner().invoke(sealift_cli, ["rollout", "advance", str(repo.directory), "vision-app", "1.3.0", *keys,
                                            *fleet]).exit_code == 1

    # (3) 1.5.0: canary d1, then site plant-2, then everyone else; plant-3 switches only inside its window
    sealift("devices", "window", "plant-3", "--inventory", str(inventory), "--timezone", "UTC", "--window", "Sat 02:00-04:00")
    plan = tmp_path / "plan-1.5.0.yaml"
    plan.write_text(f"app: vision-app\nversion: 1.5.0\nfailure_threshold: 10%\nwaves:\n  - {{name: canary, devices: [{d1.id}]}}\n"
                    "  - {name: plant-2, sites: [plant-2]}\n  - {name: rest, percent: 100}\n")
    sealift("rollout", "plan", str(repo.directory), str(plan), *keys, "--inventory", str(inventory))
    deliver("1.5.0")
    friday = _next(dt.datetime.now(dt.UTC) + dt.timedelta(days=1), weekday=4, hour=12)
    d3.clock.now = friday
    assert 'event="committed"' in d1.run() and d1.running == "1.5.0"
    assert 'event="deferred"' in d2.run() and d2.running == "1.0.0"
    report_back()
    sealift("rollout", "advance", str(repo.directory), "vision-app", "1.5.0", *keys, *fleet, "--publish", source, "--plain-http")
    assert 'event="committed"' in d2.run() and d2.running == "1.5.0"
    assert "wave rest (3 of 3)" in d3.run()
    report_back()
    sealift("rollout", "advance", str(repo.directory), "vision-app", "1.5.0", *keys, *fleet, "--publish", source, "--plain-http")
    said = d3.run()
    assert "outside site plant-3's maintenance window Sat 02:00-04:00 (UTC); it opens at" in said and d3.running == "1.0.0"
    d3.clock.now = friday + dt.timedelta(hours=14, minutes=30)  # Saturday 02:30
    assert 'event="committed"' in d3.run() and d3.running == "1.5.0"
    report_back()
    done = sealift("rollout", "status", str(repo.directory), "vision-app", "1.5.0", *fleet)
    assert [(w["name"], w["updated"], w["failed"]) for w in done["waves"]] == [("canary", 1, 0), ("plant-2", 1, 0), ("rest", 1, 0)]

    # (4) 1.5.0 halted after all: each device hears it at its next poll, with nothing newer to fetch, and goes back
    sealift("rollout", "halt", str(repo.directory), "vision-app", "1.5.0", *keys, "--reason", "latency doubled", "--publish", source,
            "--plain-http")
    for device in devices:
        said = device.run()
        assert "the rollout of vision-app 1.5.0 was halted: latency doubled" in said and device.running == "1.0.0", said


def _next(after: dt.datetime, *, weekday: int, hour: int) -> dt.datetime:
    day = after + dt.timedelta(days=(weekday - after.weekday()) % 7)
    return day.replace(hour=hour, minute=0, second=0, microsecond=0)
