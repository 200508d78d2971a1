"""The install workflow on its own, against an engine fake (the same protocol as the Docker engine,
which the integration tests drive): commit, roll back on failed checks, roll back when the engine
will not start a release, and clean up images no kept release needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import HEALTH_AND_SECRETS, SPEC, project, signed
from tests.fakes import FakeEngine
from updater.bundle import check_bundle
from updater.errors import Conflict, EngineFault, Refused
from updater.install import Installer, images_of
from updater.profiles import builtin_profile_dir, load_profiles
from updater.slots import Phase, Slots
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]
# only the container's own HEALTHCHECK, which the fake engine answers; no secrets
QUICK = SPEC.replace(HEALTH_AND_SECRETS, """\
health:
  deadline: 1s
  stabilisation: 0s
  checks:
    - {name: own, type: container, service: app}
""")


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
    state = Slots(tmp_path / "state").load()
    assert state.phase == Phase.COMMITTED and state.fault == "" and state.current == outcome.release
    assert engine.loaded == {i.config: i.tag for i in images_of(check_bundle(bundles["1.0.0"]).bundle)}  # the bundle's own IDs
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
    state = Slots(tmp_path / "state").load()
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
    kept = {image.config for v in ("1.1.0", "1.2.0") for image in images_of(check_bundle(bundles[v]).bundle)}
    assert set(engine.loaded) == kept


def test_a_failure_after_staging_over_the_previous_release_never_leaves_it_named_as_previous(tmp_path: Path,
                                                                                            bundles: dict[str, Path]) -> None:
    engine = FakeEngine()
    installer = device(tmp_path, bundles, engine)
    for version in ("1.0.0", "1.1.0"):
        assert installer.install(bundles[version]).committed
    assert Slots(tmp_path / "state").load().previous is not None  # 1.0.0, in slot a
    engine.refuse_load = True
    with pytest.raises(EngineFault, match="refused to load"):
        installer.install(bundles["1.2.0"])  # staged over slot a, then the engine failed
    state = Slots(tmp_path / "state").load()
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
    before = Slots(tmp_path / "state").load()

    def bad_content(*args: object) -> None:
        raise Refused("model detector: the content of it does not match its digest or size")

    monkeypatch.setattr(updater.stage, "_place", bad_content)
    with pytest.raises(Refused, match="does not match"):
        installer.install(bundles["1.2.0"])  # would go to slot a, where 1.0.0 is
    state = Slots(tmp_path / "state").load()
    assert state.previous == before.previous and state.previous is not None and state.previous.version == "1.0.0"
    assert (tmp_path / "state/slots/a/descriptor.json").is_file()  # still 1.0.0's
    assert installer.rollback().release.version == "1.0.0"
