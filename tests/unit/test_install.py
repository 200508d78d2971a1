"""The install workflow on its own, against an engine fake (the same protocol as the Docker engine,
which the integration tests drive): commit, roll back on failed checks, roll back when the engine
will not start a release, and clean up images no kept release needs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import QUICK_SPEC as QUICK
from tests.builders import only_app, project, signed
from tests.fakes import FakeEngine
from updater.application import Application
from updater.bundle import check_bundle, verify_bundle
from updater.errors import Conflict, DeviceFault, EngineFault, Refused
from updater.install import Installer, images_of
from updater.layout import open_layout
from updater.profiles import builtin_profile_dir, load_profiles
from updater.slots import DeviceState, Phase, Slots
from updater.stage import stage_release
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("install")
    spec_path = project(root / "src", spec=QUICK)
    built = {}
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        spec_path.write_text(QUICK.replace("version: 1.2.0", f"version: {version}"))
        spec = load_spec(spec_path)
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, (CPU.name,)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    built["root"] = signed(list(built.values()), root / "signing")
    return built


def device(tmp_path: Path, bundles: dict[str, Path], engine: FakeEngine) -> Installer:
    TrustedState(tmp_path / "state").init(bundles["root"])
    return Installer(state_dir=tmp_path / "state", runtime=engine, profile=CPU)


def test_a_healthy_release_is_committed_with_its_own_images(tmp_path: Path, bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    outcome = device(tmp_path, bundles, engine).install(bundles["1.0.0"])
    assert outcome.committed and outcome.release.version == "1.0.0" and outcome.release.slot == "a"
    state = only_app(tmp_path / "state").load()
    assert state.phase == Phase.COMMITTED and state.fault == "" and state.current == outcome.release
    assert engine.tags == {i.tag: i.config for i in images_of(check_bundle(bundles["1.0.0"]).bundle)}  # the bundle's own IDs
    assert set(engine.running) == {("demo", "a")}


@pytest.mark.parametrize(("engine", "fault", "check"), [
    (FakeEngine(health={"1.1.0": "unhealthy"}), "unhealthy", "own"),
    (FakeEngine(refuse_start=("1.1.0",)), "engine", "start"),
], ids=["failed-check", "engine-refuses"])
def test_a_release_that_fails_is_rolled_back_and_marked(tmp_path: Path, bundles: dict[str, Path], engine: FakeEngine,
                                                        fault: str, check: str) -> None:
    installer = device(tmp_path, bundles, engine)
    assert installer.install(bundles["1.0.0"]).committed
    outcome = installer.install(bundles["1.1.0"])
    assert not outcome.committed and outcome.fault == fault and outcome.reason.startswith(f"{check} failed: ")
    state = only_app(tmp_path / "state").load()
    assert state.phase == Phase.ROLLED_BACK and state.fault == fault
    assert state.current is not None and state.current.version == "1.0.0" and state.current.slot == "a"
    assert engine.running.keys() == {("demo", "a")} and engine.running[("demo", "a")][0] == "1.0.0"
    assert outcome.release.digest in state.failed  # not tried again without --force
    assert installer.install(bundles["1.2.0"]).committed  # a newer one still goes in


def test_images_no_kept_release_uses_are_removed_after_a_commit(tmp_path: Path, bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        assert installer.install(bundles[version]).committed
    kept = [image for v in ("1.1.0", "1.2.0") for image in images_of(check_bundle(bundles[v]).bundle)]
    assert engine.loaded == {image.config for image in kept}
    assert set(engine.tags) == {image.tag for image in kept}  # one tag per kept release, not one per version ever installed


def test_a_failure_after_staging_over_the_previous_release_never_leaves_it_named_as_previous(tmp_path: Path,
                                                                                            bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    for version in ("1.0.0", "1.1.0"):
        assert installer.install(bundles[version]).committed
    assert only_app(tmp_path / "state").load().previous is not None  # 1.0.0, in slot a
    engine.refuse_load = True
    with pytest.raises(EngineFault, match="refused to load"):
        installer.install(bundles["1.2.0"])  # staged over slot a, then the engine failed
    state = only_app(tmp_path / "state").load()
    assert state.current is not None and state.current.version == "1.1.0" and state.previous is None
    assert state.fault == "engine"
    with pytest.raises(Conflict, match="no previous release"):
        installer.rollback()  # never 1.0.0's record with 1.2.0's files


def test_staging_that_is_refused_or_fails_keeps_the_previous_release_to_return_to(tmp_path: Path, bundles: dict[str, Path],
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import updater.stage

    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    for version in ("1.0.0", "1.1.0"):
        assert installer.install(bundles[version]).committed
    before = only_app(tmp_path / "state").load()

    def bad_content(*args: object) -> None:
        raise Refused("model detector: the content of it does not match its digest or size")

    monkeypatch.setattr(updater.stage, "_place", bad_content)
    with pytest.raises(Refused, match="does not match"):
        installer.install(bundles["1.2.0"])  # would go to slot a, where 1.0.0 is
    state = only_app(tmp_path / "state").load()
    assert state.previous == before.previous and state.previous is not None and state.previous.version == "1.0.0"
    assert (tmp_path / "state/apps/demo/slots/a/descriptor.json").is_file()  # still 1.0.0's
    assert installer.rollback().release.version == "1.0.0"


class _Crash(BaseException):
    """The updater dying (a power cut, a kill): nothing after it runs."""


class _CrashingEngine(FakeEngine):
    """Takes the box down whenever ``version`` starts."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.version = version

    def start(self, release, app, slot_dir, images, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if release.version == self.version:
            raise _Crash
        super().start(release, app, slot_dir, images, **kwargs)


def test_a_release_whose_install_keeps_taking_the_box_down_is_marked_failed_after_three_tries(
        tmp_path: Path, bundles: dict[str, Path]) -> None:
    from updater.install import MAX_INTERRUPTED

    engine = _CrashingEngine("1.1.0")
    installer = device(tmp_path, bundles, engine)
    assert installer.install(bundles["1.0.0"]).committed
    for tries in range(1, MAX_INTERRUPTED + 1):
        with pytest.raises(_Crash):
            installer.install(bundles["1.1.0"])
        engine.running.clear()  # the reboot
        state = installer.app("demo").recover()
        assert state.current is not None and state.current.version == "1.0.0"
        assert engine.running[("demo", "a")][0] == "1.0.0" and installer.app("demo").serving(state).ok
        digest = check_bundle(bundles["1.1.0"]).bundle.digest
        assert (digest in state.failed) == (tries == MAX_INTERRUPTED), (tries, state.reason)
        assert f"interrupted {tries}" in state.reason or f"interrupted ({tries} of" in state.reason
    with pytest.raises(Conflict, match="failed its health checks before"):
        installer.install(bundles["1.1.0"])  # not tried by itself again: the watcher would loop
    assert only_app(tmp_path / "state").load().interrupted == {}


def test_a_failed_release_cut_short_during_its_own_rollback_is_remembered_as_failed(tmp_path: Path, bundles: dict[str, Path],
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(health={"1.1.0": "unhealthy"})
    installer = device(tmp_path, bundles, engine)
    assert installer.install(bundles["1.0.0"]).committed
    saved = Slots.save

    def crash_once_rolling_back(slots: Slots, state: DeviceState) -> None:
        saved(slots, state)
        if state.phase is Phase.ROLLING_BACK:
            raise _Crash

    monkeypatch.setattr(Slots, "save", crash_once_rolling_back)
    with pytest.raises(_Crash):
        installer.install(bundles["1.1.0"])
    monkeypatch.undo()
    state = installer.app("demo").recover()
    assert state.current is not None and state.current.version == "1.0.0"
    assert check_bundle(bundles["1.1.0"]).bundle.digest in state.failed and state.fault == "unhealthy"
    assert "its rollback was interrupted after it failed" in state.reason


def test_a_slot_that_no_longer_holds_a_release_is_never_started_under_its_name(tmp_path: Path, bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    for version in ("1.0.0", "1.1.0"):
        assert installer.install(bundles[version]).committed
    slots = tmp_path / "state" / "apps" / "demo" / "slots"
    state = only_app(tmp_path / "state").load()
    assert state.previous is not None and state.previous.slot == "a"
    # what a crash between staging 1.2.0 into slot a and recording it would leave, were `previous` not dropped first
    with open_layout(bundles["1.2.0"]) as reader:
        stage_release(reader, verify_bundle(bundles["1.2.0"]), slots / "a")
    with pytest.raises(Conflict, match=r"slot a now holds demo 1\.2\.0"):
        installer.rollback()
    after = only_app(tmp_path / "state").load()
    assert after.previous is None and after.current is not None and after.current.version == "1.1.0"
    assert engine.running.keys() == {("demo", "b")} and engine.running[("demo", "b")][0] == "1.1.0"


def test_serving_says_what_the_engine_runs_of_the_committed_release(tmp_path: Path, bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    assert installer.app("demo").serving().ok and str(installer.app("demo").serving()) == "nothing installed"
    assert installer.install(bundles["1.0.0"]).committed
    assert installer.app("demo").serving().ok and str(installer.app("demo").serving()) == "demo 1.0.0 (slot a): serving"
    engine.running.clear()  # the engine lost it (an engine restart, a container removed by hand)
    serving = installer.app("demo").serving()
    assert not serving.ok and str(serving) == "demo 1.0.0 (slot a) is committed but not serving (app missing)"


def test_a_recovery_the_engine_cuts_short_still_stops_the_candidate_next_time_and_does_not_blame_it(
        tmp_path: Path, bundles: dict[str, Path]) -> None:
    engine = _CrashingEngine("none")
    installer = device(tmp_path, bundles, engine)
    assert installer.install(bundles["1.0.0"]).committed

    def crash_in_health(*args: object, **kwargs: object) -> None:
        raise _Crash

    import updater.application

    original = updater.application.wait_healthy
    updater.application.wait_healthy = crash_in_health  # type: ignore[assignment]
    try:
        with pytest.raises(_Crash):
            installer.install(bundles["1.1.0"])  # 1.1.0 runs in slot b when the updater dies
    finally:
        updater.application.wait_healthy = original
    assert set(engine.running) == {("demo", "b")}

    def engine_down(app: str, slot: str) -> None:
        raise EngineFault("the Docker engine does not answer")

    engine.stop = engine_down  # type: ignore[method-assign]
    with pytest.raises(EngineFault):
        installer.app("demo").recover()
    state = only_app(tmp_path / "state").load()
    assert state.phase is Phase.TRYING and state.candidate is not None and state.candidate.version == "1.1.0"
    assert state.interrupted == {}  # the engine's outage is not the release's doing
    del engine.stop  # the engine answers again
    state = installer.app("demo").recover()
    assert state.candidate is None and set(engine.running) == {("demo", "a")}  # the candidate is stopped after all
    assert list(state.interrupted.values()) == [1]


def test_the_service_keeps_going_when_it_cannot_converge_and_converges_once_it_can(tmp_path: Path, bundles: dict[str, Path]) -> None:
    from updater.daemon import Daemon

    before = FakeEngine()
    installer = device(tmp_path, bundles, before)
    assert installer.install(bundles["1.0.0"]).committed
    engine = FakeEngine(refuse_start=("1.0.0",))
    engine.tags = dict(before.tags)
    installer.runtime = engine  # the box rebooted: its images are there, nothing runs, and the engine will not start 1.0.0
    lines: list[str] = []
    (tmp_path / "media").mkdir()
    daemon = Daemon(installer, tmp_path / "media", interval=1, log=lines.append)
    daemon.run(once=True)  # no exception: the loop is up, waiting for what may be the fix
    assert daemon.unconverged and any('event="recover-failed"' in line and "could not start it" in line for line in lines)
    shutil.copytree(bundles["1.1.0"], tmp_path / "media" / bundles["1.1.0"].name)  # the fix arrives
    daemon.run(once=True)
    state = only_app(tmp_path / "state").load()
    assert state.current is not None and state.current.version == "1.1.0" and installer.app("demo").serving().ok
    engine.refuse_start.clear()
    daemon.run(once=True)
    assert not daemon.unconverged


def test_a_release_marked_failed_by_a_recovery_cut_short_stays_failed_when_recovered_again(
        tmp_path: Path, bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from updater.install import MAX_INTERRUPTED

    engine = _CrashingEngine("1.1.0")
    installer = device(tmp_path, bundles, engine)
    assert installer.install(bundles["1.0.0"]).committed
    for _ in range(MAX_INTERRUPTED - 1):
        with pytest.raises(_Crash):
            installer.install(bundles["1.1.0"])
        installer.app("demo").recover()
    with pytest.raises(_Crash):
        installer.install(bundles["1.1.0"])  # the last try

    def power_cut(*args: object) -> str:
        raise _Crash

    monkeypatch.setattr(Application, "_back_to_current", power_cut)
    with pytest.raises(_Crash):
        installer.app("demo").recover()  # counted and marked failed, then the power went
    monkeypatch.undo()
    state = installer.app("demo").recover()
    key = check_bundle(bundles["1.1.0"]).bundle.digest
    assert key in state.failed and state.interrupted == {} and "marked failed" in state.reason and state.fault == "unhealthy"


def test_a_release_whose_runtime_the_engine_lacks_is_refused_before_the_switch(tmp_path: Path) -> None:
    spec_path = project(tmp_path / "src", spec=QUICK.replace("      image: app\n", "      image: app\n      runtime: nvidia\n"))
    spec = load_spec(spec_path)
    (b,) = build_bundles(spec, select_profiles(spec, PROFILES, (CPU.name,)), BuildOptions(out=tmp_path / "out", epoch=0))
    TrustedState(tmp_path / "state").init(signed([b.path], tmp_path / "signing"))
    engine = FakeEngine(runtimes=("runc",))
    with pytest.raises(DeviceFault, match=r"demo 1\.2\.0 for x86_64-cpu needs what this device lacks: service app needs the "
                                          r"container runtime nvidia, which the engine lacks \(it has runc\)"):
        Installer(state_dir=tmp_path / "state", runtime=engine, profile=CPU).install(b.path)
    assert not engine.tags and not engine.running  # nothing loaded, nothing started
    assert only_app(tmp_path / "state").load().fault == "device"
    with_runtime = FakeEngine(runtimes=("runc", "nvidia"))
    assert Installer(state_dir=tmp_path / "state", runtime=with_runtime, profile=CPU).install(b.path).committed


def test_a_privileged_release_is_refused_where_the_devices_profile_does_not_allow_it(tmp_path: Path) -> None:
    import dataclasses

    spec_path = project(tmp_path / "src", spec=QUICK.replace("      image: app\n", "      image: app\n      privileged: true\n")
                        + "allow_privileged: true\n")
    spec = load_spec(spec_path)
    allowing = dataclasses.replace(CPU, allow_privileged=True)  # the build machine's profile allows it
    (b,) = build_bundles(spec, [allowing], BuildOptions(out=tmp_path / "out", epoch=0))
    TrustedState(tmp_path / "state").init(signed([b.path], tmp_path / "signing"))
    engine = FakeEngine()
    with pytest.raises(Refused, match=r"demo 1\.2\.0 runs service app privileged, which this device's profile does not allow"):
        Installer(state_dir=tmp_path / "state", runtime=engine, profile=CPU).install(b.path)
    assert not engine.running and not engine.tags
    assert Installer(state_dir=tmp_path / "state", runtime=engine, profile=allowing).install(b.path).committed


def test_a_node_that_reaches_the_disks_under_another_name_is_refused_unless_privileged_is_allowed(tmp_path: Path) -> None:
    import dataclasses
    import os
    import stat

    from updater.accelerator import Access, Device

    disk = tmp_path / "nodes" / "camera0"  # named like a camera, a block device in truth
    disk.parent.mkdir()
    os.mknod(disk, 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    profile = dataclasses.replace(CPU, access=Access(devices=(Device(host=(str(disk),)),)))
    spec = load_spec(project(tmp_path / "src", spec=QUICK.replace("      image: app\n",
                                                                  "      image: app\n      x-sealift: {accelerator: required}\n")))
    (b,) = build_bundles(spec, [profile], BuildOptions(out=tmp_path / "out", epoch=0))
    TrustedState(tmp_path / "state").init(signed([b.path], tmp_path / "signing"))
    engine = FakeEngine()
    with pytest.raises(Refused, match=rf"service app would reach {disk}, a block device, which only a privileged container may"):
        Installer(state_dir=tmp_path / "state", runtime=engine, profile=profile).install(b.path)
    assert not engine.running
    allowing = dataclasses.replace(profile, allow_privileged=True)
    assert Installer(state_dir=tmp_path / "state", runtime=engine, profile=allowing).install(b.path).committed
