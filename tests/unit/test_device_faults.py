"""Device faults at every step of an install: a state directory that fills up, or that is mounted
read-only. Each ends in one DeviceFault naming the fault, with nothing partial left behind that
grows or blocks the next run, and the next run succeeds once the fault is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.export import export
from bundler.spec import load_spec
from tests.builders import QUICK_SPEC as QUICK
from tests.builders import only_app, project, signed
from tests.fakes import FakeEngine
from updater.errors import DeviceFault, EngineFault, SealiftError
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]
DISK = 4 << 20


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"mount {' '.join(args)}: {done.stderr.strip()}")
        pytest.skip("needs root to mount")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    spec_path = project(root / "src", spec=QUICK)
    built = {}
    for version in ("1.0.0", "1.1.0"):
        (spec_path.parent / "models" / "int8.bin").write_bytes(os.urandom(256 << 10))  # incompressible: bytes on disk
        spec_path.write_text(QUICK.replace("version: 1.2.0", f"version: {version}"))
        spec = load_spec(spec_path)
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, (CPU.name,)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    built["root"] = signed(list(built.values()), root / "signing")
    export([built["1.1.0"]], root / "medium")
    built["medium"] = root / "medium"
    return built


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs holding the state directory."""
    mount = tmp_path / "disk"
    mount.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount))
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but for ``leave`` bytes; returns the filler to remove."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(1, st.f_bavail * st.f_frsize - leave))
    return filler


def _footprint(state: Path) -> set[str]:
    """Every file and directory in the state directory, by its path relative to it."""
    return {str(p.relative_to(state)) for p in state.rglob("*")}


def _partial(state: Path) -> list[str]:
    """What an unfinished step leaves: unfinished bundles, partial blobs, half-made slots, temporary
    files (every hidden name but the store's lock folder), and trust copies beside the one in use."""
    hidden = [p for p in _footprint(state) if any(part.startswith(".") and part != ".locks" for part in Path(p).parts)]
    trusted = (state / "trust").resolve().name if (state / "trust").exists() else None
    copies = [p for p in _footprint(state) if "/" not in p and p.startswith("trust-") and p != trusted]
    return sorted(hidden + copies)


def _device(state: Path, releases: dict[str, Path], engine: FakeEngine) -> Installer:
    shutil.rmtree(state, ignore_errors=True)
    TrustedState(state).init(releases["root"])
    installer = Installer(state_dir=state, runtime=engine, profile=CPU)
    assert installer.install(releases["1.0.0"]).committed
    return installer


def _step(message: str) -> str:
    """The step of an install a fault message names."""
    for words, step in (("store ", "store"), ("trusted metadata", "trust"), ("staging", "staging"), ("state", "state")):
        if words in message:
            return step
    return message


def test_a_full_disk_at_any_step_of_an_install_is_a_device_fault_that_leaves_nothing(
        disk: Path, releases: dict[str, Path]) -> None:
    """An install from a medium onto a disk left with 0, 4, 8, ... KiB free, until it fits."""
    state, steps = disk / "state", set()
    for leave in range(0, DISK, 4 << 10):
        engine = FakeEngine()
        installer = _device(state, releases, engine)
        before = only_app(state).load().current
        assert before is not None
        filler = _fill(disk, leave)
        try:
            outcome = installer.install(releases["medium"])
        except SealiftError as e:
            assert isinstance(e, DeviceFault), e.diagnostics()
            assert "\n" not in e.diagnostics() and ("No space left" in e.diagnostics() or "disk is full" in e.diagnostics())
            steps.add(_step(e.diagnostics()))
            assert only_app(state).load().current == before and engine.running[("demo", before.slot)][0] == "1.0.0"
            assert _partial(state) == [], f"{leave} bytes free"
        else:
            assert outcome.committed
            break
        finally:
            filler.unlink()
        assert installer.install(releases["medium"]).committed, f"{leave} bytes free"  # the fault is gone: it goes in
        assert _partial(state) == []
    else:
        pytest.fail(f"the install never fitted in {DISK} bytes")
    assert {"store", "trust", "staging"} <= steps, steps
    kept = {p.name for p in (state / "bundles").iterdir() if not p.name.startswith(".")}
    assert {p.name for p in (state / "bundles" / ".locks").iterdir()} <= kept  # lock files go with their bundles


def test_a_read_only_state_directory_is_a_device_fault_everywhere(disk: Path, releases: dict[str, Path]) -> None:
    state = disk / "state"
    engine = FakeEngine()
    TrustedState(state).init(releases["root"])
    installer = Installer(state_dir=state, runtime=engine, profile=CPU)
    assert installer.install(releases["1.0.0"]).committed
    before = _footprint(state)
    _mount("-o", "remount,ro", str(disk))
    try:
        with pytest.raises(DeviceFault, match="Read-only file system"):
            installer.install(releases["medium"])
        with pytest.raises(DeviceFault, match="Read-only file system"):
            TrustedState(state).init(releases["root"], force=True)
        assert _footprint(state) == before
    finally:
        _mount("-o", "remount,rw", str(disk))
    assert installer.install(releases["medium"]).committed


class _DyingEngine(FakeEngine):
    """An engine that stops answering after ``calls`` requests (its containers keep running, as when
    dockerd dies), until ``revive``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls_left: int | None = None

    def _ask(self) -> None:
        if self.calls_left is not None:
            if self.calls_left <= 0:
                raise EngineFault("the Docker engine at unix:///run/docker.sock does not answer (is dockerd running?)")
            self.calls_left -= 1

    def revive(self) -> None:
        self.calls_left = None


for _name in ("load_images", "start", "stop", "containers", "run_in", "images", "remove_image"):
    def _asking(self: _DyingEngine, *args: object, _real: str = _name, **kwargs: object) -> object:
        self._ask()
        return getattr(FakeEngine, _real)(self, *args, **kwargs)
    setattr(_DyingEngine, _name, _asking)


def test_an_engine_that_stops_answering_at_any_step_is_an_engine_fault_and_the_device_recovers(
        disk: Path, releases: dict[str, Path]) -> None:
    """The engine dies after 0, 1, 2, ... requests of an install, until the install no longer needs it."""
    state = disk / "state"
    for calls in range(64):
        engine = _DyingEngine()
        installer = _device(state, releases, engine)
        engine.calls_left = calls
        try:
            outcome = installer.install(releases["medium"])
        except SealiftError as e:
            assert isinstance(e, EngineFault), e.diagnostics()
            assert "does not answer" in e.diagnostics() and "\n" not in e.diagnostics()
        else:
            if engine.calls_left is not None and engine.calls_left > 0:
                assert outcome.committed
                break  # the whole install ran before the engine would have died
            assert outcome.committed or outcome.fault == "engine", outcome
        engine.revive()
        converged = installer.app("demo").recover()
        assert converged.current is not None and converged.candidate is None, calls
        assert installer.app("demo").serving(converged).ok, f"{calls}: {installer.app('demo').serving(converged)}"
        assert set(engine.running) == {("demo", converged.current.slot)}, calls
        assert _partial(state) == []
    else:
        pytest.fail("the install never finished")
