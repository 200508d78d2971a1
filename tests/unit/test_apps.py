"""Several applications on one device (updater.apps, and the installer that picks one per bundle),
against an engine fake: each has its own slots, state and lock; one's install, rollback or recovery
never touches another; the store keeps what every one of them needs; a state directory of the
single-application layout is moved in place, and a move cut short at any step is finished."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.export import export
from bundler.spec import load_spec
from tests.builders import QUICK_SPEC as QUICK
from tests.builders import project, signed
from tests.fakes import FakeEngine
from updater.apps import Apps
from updater.daemon import Daemon
from updater.errors import Conflict, InputError
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.slots import Phase
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """demo 1.0.0 and 1.1.0 (host port 8080), camera 1.0.0 (host port 8081; provides mqtt on the device
    network), clash 1.0.0 (host port 8080), reader 1.0.0 (host port 8082; needs mqtt), routed 1.0.0
    (no host port; a route to its port 8080)."""
    root = tmp_path_factory.mktemp("apps")
    built = {}
    links = {"camera": "  x-sealift: {provides: {mqtt: {service: app, port: 1883}}}\n", "reader": "  x-sealift: {needs: [mqtt]}\n",
             "routed": "  x-sealift: {routes: [{path: /, service: app, port: 8080}]}\n"}
    for name, version, port in (("demo", "1.0.0", 8080), ("demo", "1.1.0", 8080), ("camera", "1.0.0", 8081),
                                ("clash", "1.0.0", 8080), ("reader", "1.0.0", 8082), ("routed", "1.0.0", 0)):
        text = QUICK.replace("name: demo", f"name: {name}").replace("version: 1.2.0", f"version: {version}") \
            .replace('"8080:8080"', f'"{port}:8080"').replace("health:\n", links.get(name, "") + "health:\n")
        text = text.replace('      ports: ["0:8080"]\n', "")  # port 0: none published, reached through the ingress
        spec = load_spec(project(root / f"src-{name}-{version}", spec=text))
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, (CPU.name,)), BuildOptions(out=root / "out", epoch=0))
        built[f"{name}-{version}"] = b.path
    built["root"] = signed(list(built.values()), root / "signing")
    return built


def device(tmp_path: Path, bundles: dict[str, Path], engine: FakeEngine, **options: object) -> Installer:
    TrustedState(tmp_path / "state").init(bundles["root"])
    return Installer(state_dir=tmp_path / "state", runtime=engine, profile=CPU, **options)  # type: ignore[arg-type]


def test_each_application_has_its_own_slots_and_one_never_touches_another(tmp_path: Path, bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    assert installer.install(bundles["demo-1.0.0"]).committed
    assert installer.install(bundles["camera-1.0.0"]).committed  # slot a of its own, beside demo's
    assert engine.running.keys() == {("demo", "a"), ("camera", "a")}
    assert installer.apps.names() == ["camera", "demo"]
    assert installer.install(bundles["demo-1.1.0"]).committed
    camera = installer.apps.slots("camera").load()
    assert engine.running[("camera", "a")][0] == "1.0.0" and camera.current is not None and camera.current.version == "1.0.0"
    assert installer.rollback("demo").release.version == "1.0.0"
    assert engine.running.keys() == {("demo", "a"), ("camera", "a")}
    assert installer.apps.slots("camera").load() == camera  # nothing of camera changed
    with pytest.raises(InputError, match=r"this device holds 2 applications \(camera, demo\); name one"):
        installer.rollback()
    with pytest.raises(Conflict, match="application vision is not installed on this device"):
        installer.rollback("vision")
    states = installer.recover()
    assert {name: s.current.version for name, s in states.items() if not isinstance(s, Exception) and s.current} == \
        {"camera": "1.0.0", "demo": "1.0.0"}


def test_the_store_keeps_what_every_application_needs(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer = device(tmp_path, bundles, FakeEngine())
    for name in ("demo-1.0.0", "demo-1.1.0", "camera-1.0.0"):
        assert installer.install(bundles[name]).committed
    kept = {r.digest for s in installer.apps.states().values() for r in (s.current, s.previous) if r is not None}
    assert len(kept) == 3 and all(installer.store.has(digest) for digest in kept)


def test_an_install_waits_for_nothing_another_application_holds(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer = device(tmp_path, bundles, FakeEngine())
    assert installer.install(bundles["demo-1.0.0"]).committed
    with installer.apps.slots("demo").locked():  # demo is being installed or rolled back by another updater
        assert installer.install(bundles["camera-1.0.0"]).committed
        with pytest.raises(Conflict, match="demo: another sealift-updater is installing or rolling it back"):
            installer.install(bundles["demo-1.1.0"])
    assert installer.install(bundles["demo-1.1.0"]).committed


def test_two_applications_that_publish_the_same_host_port_are_refused_before_anything_changes(
        tmp_path: Path, bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    assert installer.install(bundles["demo-1.0.0"]).committed
    with pytest.raises(Conflict, match=r"clash 1\.0\.0 cannot run beside the other applications: demo/app publishes host port 8080/tcp, "
                                       r"which clash/app publishes too"):
        installer.install(bundles["clash-1.0.0"])
    assert engine.running.keys() == {("demo", "a")}
    assert not installer.apps.slots("clash").slot_dir("a").exists()  # nothing staged
    assert installer.apps.slots("clash").load().fault == "conflict"  # verified as clash's: said in its status


def test_an_application_whose_needs_nothing_provides_is_refused_until_something_does(tmp_path: Path,
                                                                                    bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    with pytest.raises(Conflict, match=r"reader 1\.0\.0 cannot run beside the other applications: reader needs mqtt, which no "
                                       r"other application on this device provides \(they provide: nothing\)"):
        installer.install(bundles["reader-1.0.0"])
    assert engine.running == {} and not installer.apps.slots("reader").slot_dir("a").exists()
    assert installer.install(bundles["camera-1.0.0"]).committed
    assert installer.install(bundles["reader-1.0.0"]).committed
    assert engine.running.keys() == {("camera", "a"), ("reader", "a")}


def test_a_medium_of_several_applications_installs_each_one_the_device_runs(tmp_path: Path, bundles: dict[str, Path]) -> None:
    watch = tmp_path / "watch"
    export([bundles["demo-1.0.0"], bundles["camera-1.0.0"]], watch / "stick")
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    with pytest.raises(InputError, match=r"holds releases of several applications \(camera, demo\); name one with --app"):
        installer.install(watch / "stick")
    assert installer.install(watch / "stick", app="camera").release.name == "camera"
    lines: list[str] = []
    Daemon(installer, watch, interval=1, log=lines.append).scan()
    assert engine.running.keys() == {("demo", "a"), ("camera", "a")}
    assert sum('event="install"' in line for line in lines) == 1  # camera runs that release already


def test_a_device_that_names_its_applications_skips_the_others(tmp_path: Path, bundles: dict[str, Path]) -> None:
    watch = tmp_path / "watch"
    export([bundles["demo-1.0.0"], bundles["camera-1.0.0"]], watch / "stick")
    engine = FakeEngine()
    lines: list[str] = []
    daemon = Daemon(device(tmp_path, bundles, engine, declared=["camera"]), watch, interval=1, log=lines.append)
    daemon.scan()
    daemon.scan()
    assert engine.running.keys() == {("camera", "a")}
    skipped = [line for line in lines if 'event="skipped"' in line]
    assert len(skipped) == 1 and 'app="demo"' in skipped[0]  # said once


def _to_legacy(state: Path, name: str) -> None:
    """Put ``name``'s state and slots where the single-application layout kept them."""
    (state / "apps" / name / "state.json").rename(state / "state.json")
    (state / "apps" / name / "slots").rename(state / "slots")
    shutil.rmtree(state / "apps")


@pytest.mark.parametrize("cut_after", ["nothing", "made", "moved", "linked"])
def test_a_single_application_state_is_moved_in_place_and_a_cut_move_is_finished(tmp_path: Path, bundles: dict[str, Path],
                                                                                   cut_after: str) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    for name in ("demo-1.0.0", "demo-1.1.0"):
        assert installer.install(bundles[name]).committed
    state = tmp_path / "state"
    before = installer.apps.slots("demo").load()
    _to_legacy(state, "demo")
    # what an updater killed at each step of the move leaves
    if cut_after in ("made", "moved", "linked"):
        (state / "apps" / "demo").mkdir(parents=True)
    if cut_after in ("moved", "linked"):
        (state / "slots").rename(state / "apps" / "demo" / "slots")
    if cut_after == "linked":
        (state / "slots").symlink_to(Path("apps/demo/slots"))
    apps = Apps(state)
    assert apps.names() == ["demo"] and apps.slots("demo").load() == before
    assert not (state / "state.json").exists()
    assert (state / "slots").is_symlink() and (state / "slots" / "b" / "descriptor.json").is_file()  # the running containers' mounts
    again = Installer(state_dir=state, runtime=engine, profile=CPU)
    assert again.rollback().release.version == "1.0.0"  # the previous release is still there to return to
    assert again.install(bundles["demo-1.1.0"], force=True).committed
    assert not (state / "slots").exists()  # no container mounts through the old path any more
    assert again.apps.slots("demo").load().phase is Phase.COMMITTED


def test_a_single_application_state_that_names_no_release_is_kept_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"phase": "idle", "reason": "refused: a medium", "history": []}))
    assert Apps(state).names() == []
    assert json.loads((state / "state.json.before-apps").read_text())["reason"] == "refused: a medium"


def test_an_install_is_the_first_thing_done_after_the_updater_is_upgraded(tmp_path: Path, bundles: dict[str, Path]) -> None:
    installer = device(tmp_path, bundles, FakeEngine())
    assert installer.install(bundles["demo-1.0.0"]).committed
    _to_legacy(tmp_path / "state", "demo")
    again = Installer(state_dir=tmp_path / "state", runtime=installer.runtime, profile=CPU)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(again.install(bundles["demo-1.1.0"])), daemon=True)
    worker.start()
    worker.join(timeout=30)  # the move of the old layout must not wait on the install's own lock
    assert done and getattr(done[0], "committed", False)
    assert again.apps.names() == ["demo"] and again.apps.slots("demo").load().previous is not None


def test_a_release_the_ingress_cannot_take_is_rolled_back_and_not_held_against_it(tmp_path: Path,
                                                                                  bundles: dict[str, Path]) -> None:
    from updater.ingress import Ingress

    Ingress(tmp_path / "state").init(port=8080)  # set up, but HAProxy is not running
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    outcome = installer.install(bundles["routed-1.0.0"])
    assert not outcome.committed and outcome.fault == "device" and outcome.reason.startswith("ingress failed: ")
    assert engine.running == {}  # nothing runs that no route leads to
    state = installer.apps.slots("routed").load()
    assert state.phase is Phase.ROLLED_BACK and state.failed == ()  # the release is not to blame: tried again next time
