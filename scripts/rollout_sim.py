"""A fleet of simulated devices meeting staged rollouts: state directories, no engine.

Each simulated device is a real device state (trusted root, enrollment, trusted metadata) whose
poll is the device's own code: a refresh of its TUF metadata from a site mirror (here a folder the
repository's metadata is published to, read as a registry's would be) on a copy of its trusted
state, then the rollout decision (:class:`updater.gate.Gate`). An install is recorded as the
device's committed release (or, for a device the test makes fail, as a rollback in its journal),
and its signed reports go to the fleet database as a real device's would. The office side is
Sealift's own: plans signed by the rollout role, ``rollout status`` and ``check`` against the
fleet database.

Used by ``tests/unit/test_rollout_fleet.py`` and the rollout benchmark (``scripts/bench.py --rollout``).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundler.devices import Inventory  # noqa: E402
from bundler.fleet import FleetDatabase  # noqa: E402
from bundler.keys import Keyring  # noqa: E402
from bundler.repo import Repository  # noqa: E402
from bundler.rollout import Rollouts  # noqa: E402
from bundler.rollout_status import WaveStatus, failing, rollout_status  # noqa: E402
from tests.builders import quick_releases  # noqa: E402
from tests.fakes import FakeEngine  # noqa: E402
from updater.errors import DeliveryError, SealiftError  # noqa: E402
from updater.gate import Gate, signed_plan  # noqa: E402
from updater.identity import DeviceIdentity  # noqa: E402
from updater.install import Installer  # noqa: E402
from updater.reports import Reports  # noqa: E402
from updater.rollout import Decision, Plan, State  # noqa: E402
from updater.slots import DeviceState, Phase, Release  # noqa: E402
from updater.trust import TrustedState  # noqa: E402
from updater.tuf_client import TufClient  # noqa: E402

PASSPHRASE = "test passphrase"  # what tests.builders signs with
APP = "demo"


class MirrorFolder:
    """A site mirror's metadata as a folder of files (the ``MetadataSource`` a registry is): counts what it serves."""

    may_be_older = False
    missing: type[SealiftError] = DeliveryError

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.what = f"mirror {folder.name}"
        self.served = 0

    def names(self) -> None:
        return None

    def read(self, name: str) -> bytes | None:
        path = self.folder / name
        if not path.is_file():
            return None
        data = path.read_bytes()
        self.served += len(data)
        return data


@dataclass
class Poll:
    """What one device's poll decided, what it cost and what it fetched."""

    device: str
    decision: Decision
    recalled: bool  # a halted plan with rollback names the release it runs
    seconds: float
    fetched: int


@dataclass
class SimDevice:
    name: str
    site: str
    installer: Installer
    id: str = ""
    runs: str = ""  # the release it runs ("" before any)
    polls: list[Poll] = field(default_factory=list)


class SimulatedFleet:
    """``devices`` simulated devices over ``sites`` sites, the office's signed releases of ``APP`` and its
    rollout role, a mirror folder, an inventory and a fleet database, all under ``root``."""

    def __init__(self, root: Path, *, devices: int = 1000, sites: int = 10, versions: tuple[str, ...] = ("1.1.0", "1.2.0")) -> None:
        self.root = root
        built = quick_releases(root / "office", versions=versions)
        self.releases = {v: built[v] for v in versions}
        self.repo = Repository(root / "office" / "signing" / "repo",
                               Keyring(root / "office" / "signing" / "keys", passphrase=lambda: PASSPHRASE))
        self.repo.init_rollout()
        self.rollouts = Rollouts(self.repo)
        self.mirror = root / "mirror"
        self.inventory = Inventory(root / "devices.yaml")
        self.db = FleetDatabase(root / "fleet.db")
        self.medium = root / "reports-medium"
        self.medium.mkdir()
        trusted_root = built["root"]
        records = []
        self.devices: list[SimDevice] = []
        for n in range(devices):
            name, site = f"d{n:05d}", f"plant-{n % sites:02d}"
            state = root / "devices" / name
            TrustedState(state).init(trusted_root)
            record = DeviceIdentity(state).enroll(site=site, profile="x86_64-cpu")
            (state / "record.json").write_text(json.dumps(record))
            records.append(state / "record.json")
            installer = Installer(state_dir=state, runtime=FakeEngine(), profile=None)
            self.devices.append(SimDevice(name=name, site=site, installer=installer, id=str(record["device"])))
        self.inventory.add_all(records)
        self.publish()

    def publish(self) -> None:
        """Publish the repository's current metadata to the mirror folder (newest timestamp last)."""
        self.mirror.mkdir(exist_ok=True)
        files = self.repo.current_files()
        for name in sorted(files, key=lambda n: n == "timestamp.json"):
            (self.mirror / name).write_bytes(files[name])

    def poll(self, device: SimDevice, version: str) -> Poll:
        """One poll of ``device``: refresh from the mirror, then what the plan of ``APP`` ``version`` says."""
        started = time.perf_counter()
        source = MirrorFolder(self.mirror)
        gate = Gate(device.installer)
        with device.installer.trust.candidate() as metadata_dir:
            client = TufClient(metadata_dir, source)
            client.refresh()
            decision = gate.decision(client, APP, version)
            plan = signed_plan(client, APP, device.runs) if device.runs else None
        recalled = plan is not None and plan.state is State.HALTED and plan.rollback
        poll = Poll(device=device.id, decision=decision, recalled=recalled, seconds=time.perf_counter() - started,
                    fetched=source.served)
        device.polls.append(poll)
        return poll

    def poll_all(self, version: str) -> list[Poll]:
        return [self.poll(device, version) for device in self.devices]

    def install(self, device: SimDevice, version: str, *, healthy: bool) -> None:
        """What an install of ``version`` leaves on the device: the release committed, or a rollback journaled."""
        release = Release(name=APP, version=version, profile="x86_64-cpu", digest=f"sha256:{'0' * 63}{version[-1]}", slot="a")
        if healthy:
            device.installer.apps.slots(APP).save(DeviceState(phase=Phase.COMMITTED, current=release))
            device.runs = version
        else:
            device.installer.journal.record("rolled-back", what="install", app=APP, version=version, reason="health check failed",
                                            fault="unhealthy")

    def go_back(self, device: SimDevice) -> None:
        """What a recall leaves: the device runs its previous release (here: none) again."""
        device.installer.apps.slots(APP).save(DeviceState(phase=Phase.IDLE))
        device.runs = ""

    def report(self, devices: Iterable[SimDevice] | None = None) -> None:
        """Every device (or those given) makes a signed report; the office imports them."""
        for device in self.devices if devices is None else devices:
            reports = Reports(device.installer)
            reports.make()
            reports.to_medium(self.medium)
        self.db.import_medium(self.medium, self.inventory)

    def status(self, plan: Plan) -> list[WaveStatus]:
        with self.db.connect() as connection:
            return rollout_status(connection, self.inventory, plan)

    def check(self, version: str) -> str | None:
        """``sealift rollout check`` for ``APP`` ``version``: halt (and publish) when an open wave fails."""
        plan = self.rollouts.get(APP, version)
        why = failing(self.status(plan), plan)
        if why:
            self.rollouts.halt(APP, version, reason=why)
            self.publish()
        return why


def timing(polls: list[Poll]) -> dict[str, float]:
    """Median and 95th percentile of a round's poll times (ms), and the median bytes fetched."""
    seconds = sorted(p.seconds for p in polls)
    return {"median_ms": round(statistics.median(seconds) * 1000, 2), "p95_ms": round(seconds[int(len(seconds) * 0.95)] * 1000, 2),
            "fetched_bytes": int(statistics.median(p.fetched for p in polls))}


def clean(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
