"""A staged rollout as devices meet it, with real TUF metadata and an engine fake: the plan signed by
the rollout role travels in a bundle's metadata; a device outside the open waves waits (Deferred,
said in its status and journal) and installs once its wave opens; a halt sends a device that runs
the release back; an older plan replayed, a plan signed by another key, or a rollout role that a
team's role would shadow change nothing."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from bundler.cli import cli
from bundler.keys import Keyring
from bundler.policy import Policy
from bundler.repo import Repository
from bundler.rollout import Rollouts
from tests.builders import enrolled_device, quick_releases
from tests.envelope import result_of
from tests.fakes import FakeEngine
from updater.errors import Deferred, InputError, Refused
from updater.gate import Gate
from updater.install import Installer
from updater.rollout import Plan, Wave
from updater.windows import Maintenance

PASS = "test passphrase"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    quick_releases(root)
    return root


@pytest.fixture
def fleet(tmp_path: Path, built: Path) -> dict[str, Any]:
    """A copy of the signed releases (demo 1.0.0, 1.1.0), a rollout role, and two devices at site
    plant-7 running demo 1.0.0 (released with no plan)."""
    root = tmp_path / "office"
    shutil.copytree(built, root, symlinks=True)
    repo = Repository(root / "signing" / "repo", Keyring(root / "signing" / "keys", passphrase=lambda: PASS))
    repo.init_rollout()
    bundles = {v: next((root / "out").glob(f"*-{v}-*")) for v in ("1.0.0", "1.1.0")}
    repo.add([bundles["1.1.0"]])  # with the rollout role's (empty) metadata
    devices = {}
    for name in ("a", "b"):
        installer, inventory = enrolled_device(tmp_path, root / "signing" / "repo" / "metadata" / "1.root.json", FakeEngine(),
                                               name=name)
        assert installer.install(bundles["1.0.0"]).committed
        devices[name] = installer
    return {"repo": repo, "bundles": bundles, "inventory": inventory, "rollouts": Rollouts(repo), **devices}


def device_id(installer: Installer) -> str:
    return str(installer.identity.record()["device"])


def plan_for(*waves: Wave, **fields: Any) -> Plan:
    return Plan(app="demo", version="1.1.0", waves=waves, changed=dt.datetime.now(dt.UTC).replace(microsecond=0), **fields)


def signed_step(fleet: dict[str, Any]) -> None:
    """What a release manager's step reaches devices with: the bundle, given the new metadata."""
    fleet["repo"].add([fleet["bundles"]["1.1.0"]])


def running(installer: Installer) -> str:
    state = installer.apps.states()["demo"]
    assert state.current is not None
    return state.current.version


def test_the_canary_installs_the_others_wait_until_their_wave_opens(fleet: dict[str, Any]) -> None:
    a, b, bundle = fleet["a"], fleet["b"], fleet["bundles"]["1.1.0"]
    fleet["rollouts"].start(plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000)))
    signed_step(fleet)
    with pytest.raises(Deferred, match=r"demo 1.1.0 waits: wave rest \(2 of 2\) of the rollout of demo 1.1.0 has not started") as e:
        b.install(bundle)
    assert e.value.exit_code == 8 and running(b) == "1.0.0"
    state = b.apps.states()["demo"]
    assert state.fault == "deferred" and "wave rest (2 of 2)" in state.reason
    assert [ev["kind"] for ev in b.journal.since(0)][-1] == "deferred"
    assert a.install(bundle).committed and running(a) == "1.1.0"
    fleet["rollouts"].advance("demo", "1.1.0")
    signed_step(fleet)
    assert b.install(bundle).committed and running(b) == "1.1.0"


def test_a_halt_sends_the_devices_that_run_the_release_back_and_holds_the_rest(fleet: dict[str, Any]) -> None:
    a, b, bundle = fleet["a"], fleet["b"], fleet["bundles"]["1.1.0"]
    fleet["rollouts"].start(plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000)))
    signed_step(fleet)
    assert a.install(bundle).committed
    before_halt = Path(str(bundle) + "-before-halt")
    shutil.copytree(bundle, before_halt)
    assert Gate(a).follow() == []  # running, not halted: nothing to do
    fleet["rollouts"].halt("demo", "1.1.0", reason="inference latency doubled")
    signed_step(fleet)
    for device in (a, b):  # the halt reaches each device with whatever brings the metadata; none installs
        with pytest.raises(Deferred, match=r"the rollout of demo 1\.1\.0 is halted: inference latency doubled"):
            device.install(bundle)
    (outcome,) = Gate(a).follow()
    assert not isinstance(outcome, Exception) and outcome.committed and running(a) == "1.0.0"
    assert "halted: inference latency doubled" in outcome.reason
    assert Gate(a).follow() == [] and Gate(b).follow() == []  # back on 1.0.0; b never left it
    # the plan as it was before the halt, replayed in a bundle's metadata: the device's newer metadata decides
    with pytest.raises(Deferred, match="is halted"):
        b.install(before_halt)
    assert running(b) == "1.0.0"


def test_outside_the_sites_window_an_install_waits_unless_the_operator_overrides_it(fleet: dict[str, Any]) -> None:
    b, bundle = fleet["b"], fleet["bundles"]["1.1.0"]
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[(dt.datetime.now(dt.UTC).weekday() + 3) % 7]  # never today
    window = Maintenance.from_json({"timezone": "UTC", "windows": [f"{day} 01:00-02:00"]}, InputError, "plant-7")
    fleet["rollouts"].start(plan_for(Wave(name="all", upto=10_000), windows={"plant-7": window}))
    signed_step(fleet)
    with pytest.raises(Deferred, match=f"outside site plant-7's maintenance window {day} 01:00-02:00 \\(UTC\\); it opens at"):
        b.install(bundle)
    assert b.install(bundle, ignore_window=True).committed and running(b) == "1.1.0"
    assert next(ev for ev in b.journal.since(0) if ev["kind"] == "window-overridden")["version"] == "1.1.0"


def test_a_plan_signed_by_a_key_that_is_not_the_rollout_roles_is_refused(fleet: dict[str, Any]) -> None:
    b, bundle = fleet["b"], fleet["bundles"]["1.1.0"]
    fleet["rollouts"].start(plan_for(Wave(name="canary", devices=frozenset({device_id(fleet["a"])})), Wave(name="rest", upto=10_000)))
    signed_step(fleet)
    (path,) = (bundle / "tuf").glob("*.rollout.json")
    md = Metadata[Targets].from_bytes(path.read_bytes())
    (target,) = md.signed.targets.values()
    target.unrecognized_fields["custom"]["sealift"]["plan"]["opened"] = 2  # every wave open
    md.sign(CryptoSigner.generate_ed25519(), append=False)
    path.write_bytes(md.to_bytes())
    with pytest.raises(Refused, match="signed metadata refused: metadata not signed by enough trusted keys"):
        b.install(bundle)
    assert running(b) == "1.0.0"


def test_the_rollout_role_answers_before_a_teams_role_that_also_matches_plans(tmp_path: Path, built: Path) -> None:
    root = tmp_path / "office"
    shutil.copytree(built, root / "copy", symlinks=True)
    bundles = sorted((root / "copy" / "out").glob("*"))
    repo = Repository(root / "repo", Keyring(root / "keys", passphrase=lambda: PASS))
    repo.init(Policy())
    repo.delegate("demo-team", paths=["demo/*/*"])  # would match demo/rollout/1.1.0 too
    repo.add(bundles, role="demo-team")
    repo.init_rollout()
    rollouts = Rollouts(repo)
    rollouts.start(plan_for(Wave(name="nobody", devices=frozenset({"dev-" + "0" * 32}))))
    repo.add([b for b in bundles if "1.1.0" in b.name], role="demo-team")
    installer, _ = enrolled_device(tmp_path, root / "repo" / "metadata" / "1.root.json", FakeEngine())
    assert installer.install(next(b for b in bundles if "1.0.0" in b.name)).committed
    with pytest.raises(Deferred, match="this device is in no wave"):
        installer.install(next(b for b in bundles if "1.1.0" in b.name))
    with pytest.raises(InputError, match="create it with `sealift rollout init`"):
        repo.delegate("rollout", paths=["*/rollout/*"])
    with pytest.raises(InputError, match="role rollout already exists"):
        repo.init_rollout()


def test_a_repository_with_hashed_bins_cannot_have_a_rollout_role(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", Keyring(tmp_path / "keys", passphrase=lambda: PASS))
    repo.init(Policy(), hashed_bins=2)
    with pytest.raises(InputError, match="spreads targets over hashed bins"):
        repo.init_rollout()


def test_the_cli_steers_a_rollout_and_refuses_what_does_not_follow(fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALIFT_KEY_PASSPHRASE", PASS)
    repo = fleet["repo"]
    a = device_id(fleet["a"])
    plan_file = repo.directory.parent / "plan.yaml"
    plan_file.write_text(f"app: demo\nversion: 1.1.0\nfailure_threshold: 20\nwaves:\n  - {{name: canary, devices: [{a}]}}\n"
                         "  - {name: rest, percent: 100}\n")
    keys = ["--keys", str(repo.keys.directory)]
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, [*args], catch_exceptions=False)

    planned = run("rollout", "plan", str(repo.directory), str(plan_file), *keys, "--inventory", str(fleet["inventory"]), "--json")
    assert planned.exit_code == 0, planned.output
    assert result_of(planned.stdout)["plan"]["waves"][0]["devices"] == [a]
    again = run("rollout", "plan", str(repo.directory), str(plan_file), *keys, "--inventory", str(fleet["inventory"]))
    assert again.exit_code == 1 and "has a rollout already" in again.stderr
    assert run("rollout", "pause", str(repo.directory), "demo", "1.1.0", *keys, "--reason", "weekend").exit_code == 0
    refused = run("rollout", "advance", str(repo.directory), "demo", "1.1.0", *keys)
    assert refused.exit_code == 1 and "is paused; resume it first" in refused.stderr
    assert run("rollout", "resume", str(repo.directory), "demo", "1.1.0", *keys).exit_code == 0
    no_reports = run("rollout", "advance", str(repo.directory), "demo", "1.1.0", *keys, "--db", str(repo.directory / "none.db"))
    assert no_reports.exit_code == 2 and "no fleet database" in no_reports.stderr
    advanced = run("rollout", "advance", str(repo.directory), "demo", "1.1.0", *keys, "--unchecked", "--json")
    assert result_of(advanced.stdout)["plan"]["opened"] == 2
    done = run("rollout", "advance", str(repo.directory), "demo", "1.1.0", *keys)
    assert done.exit_code == 1 and "every wave" in done.stderr
    halted = run("rollout", "halt", str(repo.directory), "demo", "1.1.0", *keys, "--reason", "crashes", "--json")
    assert result_of(halted.stdout)["plan"]["state"] == "halted"
    shown = result_of(run("rollout", "show", str(repo.directory), "--json").stdout)
    assert [(p["version"], p["state"], p["rollback"], p["reason"]) for p in shown] == [("1.1.0", "halted", True, "crashes")]
    unknown = run("rollout", "halt", str(repo.directory), "demo", "9.9.9", *keys, "--reason", "x")
    assert unknown.exit_code == 2 and "no rollout of demo 9.9.9" in unknown.stderr
    unsigned = repo.directory.parent / "unsigned.yaml"
    unsigned.write_text(plan_file.read_text().replace("1.1.0", "2.0.0"))
    refused = run("rollout", "plan", str(repo.directory), str(unsigned), *keys, "--inventory", str(fleet["inventory"]))
    assert refused.exit_code == 2 and "demo 2.0.0 is not signed" in refused.stderr


def test_a_failing_canary_reported_back_halts_the_rollout_and_the_rest_never_install(
        fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from bundler.devices import Inventory
    from bundler.fleet import FleetDatabase
    from bundler.rollout_status import failing, rollout_status
    from updater.reports import Reports

    monkeypatch.setenv("SEALIFT_KEY_PASSPHRASE", PASS)
    a, b, bundle, repo = fleet["a"], fleet["b"], fleet["bundles"]["1.1.0"], fleet["repo"]
    fleet["rollouts"].start(plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000),
                                     failure_threshold=10.0))
    signed_step(fleet)
    a.runtime.health["1.1.0"] = "unhealthy"  # type: ignore[attr-defined]
    assert not a.install(bundle).committed and running(a) == "1.0.0"
    with pytest.raises(Deferred):
        b.install(bundle)
    medium = repo.directory.parent / "usb"
    medium.mkdir()
    for device in (a, b):
        Reports(device).make()
        Reports(device).to_medium(medium)
    db = repo.directory.parent / "fleet.db"
    assert FleetDatabase(db).import_medium(medium, Inventory(fleet["inventory"])).imported == 2
    plan = fleet["rollouts"].get("demo", "1.1.0")
    with FleetDatabase(db).connect() as connection:
        waves = rollout_status(connection, Inventory(fleet["inventory"]), plan)
    assert [(w.name, w.open, {k: len(v) for k, v in w.devices.items()}) for w in waves] == [
        ("canary", True, {"updated": 0, "failed": 1, "waiting": 0, "unheard": 0}),
        ("rest", False, {"updated": 0, "failed": 0, "waiting": 1, "unheard": 0})]
    assert failing(waves, plan) == "wave canary: 1 of 1 devices that tried demo 1.1.0 failed (100%, threshold 10%)"
    runner = CliRunner()
    common = ["--db", str(db), "--inventory", str(fleet["inventory"])]
    keys = ["--keys", str(repo.keys.directory)]
    refused = runner.invoke(cli, ["rollout", "advance", str(repo.directory), "demo", "1.1.0", *keys, *common])
    assert refused.exit_code == 1 and "may not advance: wave canary: 1 of 1" in refused.stderr
    status = runner.invoke(cli, ["rollout", "status", str(repo.directory), "demo", "1.1.0", *common, "--json"])
    assert result_of(status.stdout)["waves"][0]["devices"]["failed"] == [device_id(a)]
    checked = runner.invoke(cli, ["rollout", "check", str(repo.directory), *keys, *common, "--json"])
    assert checked.exit_code == 0, checked.output
    assert result_of(checked.stdout)["halted"] == [{"app": "demo", "version": "1.1.0", "reason": failing(waves, plan)}]
    assert fleet["rollouts"].get("demo", "1.1.0").state.value == "halted"
    signed_step(fleet)
    with pytest.raises(Deferred, match="is halted: wave canary: 1 of 1"):
        b.install(bundle)
    again = runner.invoke(cli, ["rollout", "check", str(repo.directory), *keys, *common, "--json"])
    assert result_of(again.stdout) == {"checked": [], "halted": [], "published": []}
    unchecked = runner.invoke(cli, ["rollout", "advance", str(repo.directory), "demo", "1.1.0", *keys, "--unchecked"])
    assert unchecked.exit_code == 1 and "is halted" in unchecked.stderr


def test_a_halt_on_a_medium_reaches_a_device_that_has_nothing_to_install_from_it(fleet: dict[str, Any], tmp_path: Path) -> None:
    from bundler.export import export
    from updater.daemon import Daemon

    a, bundle = fleet["a"], fleet["bundles"]["1.1.0"]
    fleet["rollouts"].start(plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000)))
    signed_step(fleet)
    assert a.install(bundle).committed
    fleet["rollouts"].halt("demo", "1.1.0", reason="bad model")
    signed_step(fleet)
    watch = tmp_path / "watch"
    export([bundle], watch / "stick")  # the release it runs, with the metadata that halts it
    lines: list[str] = []
    Daemon(a, watch, interval=1, log=lines.append).run(once=True)
    assert running(a) == "1.0.0", lines
    assert any('event="committed"' in line and "halted: bad model" in line for line in lines)


@pytest.mark.parametrize("rollout_role_too", [False, True], ids=["targets-only", "both"])
def test_a_plan_the_top_level_targets_role_signs_is_refused(fleet: dict[str, Any], rollout_role_too: bool) -> None:
    from bundler.repo import _Change
    from bundler.targets import plan_file

    a, b, repo, bundle = fleet["a"], fleet["b"], fleet["repo"], fleet["bundles"]["1.1.0"]
    canary = plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000))
    if rollout_role_too:
        fleet["rollouts"].start(canary)
    change = _Change(repo)  # the holder of the targets keys signs an "everyone now" plan itself
    change.targets.signed.targets["demo/rollout/1.1.0"] = plan_file(plan_for(Wave(name="all", upto=10_000)))
    change.targets_changed = True
    repo._commit(change)
    signed_step(fleet)
    with pytest.raises(Refused, match=r"the signed rollout plan demo/rollout/1\.1\.0: signed by a role other than the rollout role"):
        b.install(bundle)
    assert running(b) == "1.0.0"


def test_a_recall_never_goes_forward_nor_back_to_a_release_that_failed_here(fleet: dict[str, Any]) -> None:
    a, bundle = fleet["a"], fleet["bundles"]["1.1.0"]
    rollouts = fleet["rollouts"]
    rollouts.start(plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000)))
    signed_step(fleet)
    assert a.install(bundle).committed
    # 1.0.0, the release to go back to, no longer starts healthy on this device
    a.runtime.health["1.0.0"] = "unhealthy"  # type: ignore[attr-defined]
    rollouts.halt("demo", "1.1.0", reason="bad model")
    signed_step(fleet)
    with pytest.raises(Deferred):
        a.install(bundle)  # brings the halt
    (tried,) = Gate(a).follow()
    assert not isinstance(tried, Exception) and not tried.committed and running(a) == "1.1.0"
    assert Gate(a).follow() == []  # 1.0.0 failed here: not tried again at every pass


def test_two_halted_releases_never_send_a_device_back_and_forth(fleet: dict[str, Any]) -> None:
    a, bundle, rollouts = fleet["a"], fleet["bundles"]["1.1.0"], fleet["rollouts"]
    rollouts.start(plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000)))
    signed_step(fleet)
    assert a.install(bundle).committed
    older = Plan(app="demo", version="1.0.0", waves=(Wave(name="all", upto=10_000),),
                 changed=dt.datetime.now(dt.UTC).replace(microsecond=0))
    rollouts.start(older)
    rollouts.halt("demo", "1.0.0", reason="1.0.0 leaks memory")
    rollouts.halt("demo", "1.1.0", reason="1.1.0 crashes")
    signed_step(fleet)
    with pytest.raises(Deferred):
        a.install(bundle)  # brings both halts
    assert Gate(a).follow() == [] and running(a) == "1.1.0"  # 1.0.0 is recalled too: no going back to it
    assert a.rollback("demo").committed and running(a) == "1.0.0"  # the operator chooses 1.0.0 all the same
    assert Gate(a).follow() == [] and running(a) == "1.0.0"  # and a recall never goes forward, to 1.1.0


def test_a_held_medium_is_neither_copied_in_nor_tried_at_every_scan(fleet: dict[str, Any], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from bundler.export import export
    from updater import watch as watching
    from updater.daemon import Daemon

    a, b, bundle = fleet["a"], fleet["b"], fleet["bundles"]["1.1.0"]
    fleet["rollouts"].start(plan_for(Wave(name="canary", devices=frozenset({device_id(a)})), Wave(name="rest", upto=10_000)))
    signed_step(fleet)
    watch = tmp_path / "watch"
    export([bundle], watch / "stick")
    lines: list[str] = []
    daemon = Daemon(b, watch, interval=1, log=lines.append)
    assert daemon.scan() == 1 and daemon.scan() == 0  # held: looked at again only after a while
    digest = json.loads((bundle / "index.json").read_text())["manifests"][0]["digest"]
    assert not b.store.has(digest)  # nothing of it copied in while it waits
    monkeypatch.setattr(watching, "RECHECK_DEFERRED_S", 0.0)
    daemon.watcher.deferred = {k: (0.0, why) for k, (_, why) in daemon.watcher.deferred.items()}  # type: ignore[union-attr]
    assert daemon.scan() == 1
    assert sum('event="deferred"' in line for line in lines) == 1  # the same reason, said once
    history = b.apps.states()["demo"].history  # the journal went out in the reports the scans left on the medium
    assert [h.get("fault") for h in history].count("deferred") == 1
    fleet["rollouts"].advance("demo", "1.1.0")
    signed_step(fleet)
    export([bundle], watch / "stick-2")  # the next medium brings the open wave
    daemon.scan()
    assert running(b) == "1.1.0"


def test_status_says_what_a_device_waits_for(tmp_path: Path, built: Path) -> None:
    from updater.cli import cli as updater_cli

    installer, _ = enrolled_device(tmp_path, built / "signing" / "repo" / "metadata" / "1.root.json", FakeEngine())
    waits = Deferred("demo 1.1.0 waits: wave rest (2 of 2) of the rollout of demo 1.1.0 has not started (1 open)")
    installer.app("demo").deferred(waits)
    installer.app("demo").deferred(waits)  # the same wait again changes nothing
    text = CliRunner().invoke(updater_cli, ["--state-dir", str(installer.state_dir), "status"])
    assert text.exit_code == 0, text.output
    assert "  waiting: demo 1.1.0 waits: wave rest (2 of 2) of the rollout of demo 1.1.0 has not started (1 open)" in text.output
    shown = result_of(CliRunner().invoke(updater_cli, ["--state-dir", str(installer.state_dir), "status", "--json"]).stdout)
    assert shown["apps"]["demo"]["fault"] == "deferred" and shown["apps"]["demo"]["reason"] == f"deferred: {waits}"
    assert len(shown["apps"]["demo"]["history"]) == 1
    assert [e["kind"] for e in installer.journal.since(0)] == ["deferred"]
