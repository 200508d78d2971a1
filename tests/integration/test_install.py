"""A/B installs of the example on the real engine: a healthy release is committed and serves; a
broken one is rolled back by itself, the previous release serves again, and the failure is
remembered."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.devices import Inventory
from bundler.keys import Keyring
from bundler.overlay import build_overlay
from bundler.repo import Repository
from bundler.spec import load_spec
from tests import builders
from tests.builders import make_example_images, only_app, signed, unmount_secrets
from tests.realparts import DockerEngine
from updater.docker_runtime import DockerRuntime
from updater.errors import Conflict
from updater.identity import DeviceIdentity
from updater.install import Installer
from updater.plan import failure_key
from updater.profiles import builtin_profile_dir, load_profiles
from updater.slots import Phase
from updater.trust import TrustedState

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vision-app"
CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]


@pytest.fixture(scope="module")
def example_app(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example's own releases: sealift.yaml (1.0.0) and sealift-broken.yaml (1.0.1), signed."""
    make_example_images(sys.executable)
    out = tmp_path_factory.mktemp("releases")
    built = {}
    for name in ("sealift.yaml", "sealift-broken.yaml"):
        spec = load_spec(EXAMPLE / name)
        (b,) = build_bundles(spec, select_profiles(spec, load_profiles([builtin_profile_dir()]), ("x86_64-cpu",)),
                             BuildOptions(out=out, epoch=1_767_225_600))
        built[spec.version] = b.path
    built["root"] = signed(list(built.values()), out / "signing")
    return built


TOKEN = "example-token-5c0ffee"


def enroll_with_overlay(example_app: dict[str, Path], state_dir: Path, work: Path) -> Path:
    """Enroll the device at the example's site and build and sign the site's overlay (api-token = TOKEN)."""
    record = DeviceIdentity(state_dir).enroll(site="demo-site", profile="x86_64-cpu")
    (work / "record.json").write_text(json.dumps(record))
    Inventory(work / "devices.yaml").add(work / "record.json")
    os.environ["VISION_API_TOKEN"] = TOKEN
    try:
        path, _ = build_overlay(load_spec(EXAMPLE / "sealift.yaml"), "demo-site", inventory=work / "devices.yaml", out=work)
    finally:
        del os.environ["VISION_API_TOKEN"]
    signing = example_app["root"].parent.parent.parent
    Repository(signing / "repo", Keyring(signing / "keys", passphrase=lambda: "test passphrase")).add([path])
    return path


def answer(path: str, body: bytes | None = None, *, token: str | None = None) -> tuple[int, bytes]:
    return builders.answer(path, body, token=token, port=8080)  # the example's own port


def serving(deadline: float = 30) -> int:
    end = time.monotonic() + deadline
    while True:
        try:
            return answer("/healthz")[0]
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


@pytest.mark.docker
def test_install_commits_a_healthy_release_and_rolls_back_a_broken_one(example_app: dict[str, Path], docker_engine: DockerEngine,
                                                                       tmp_path: Path) -> None:
    state_dir = tmp_path / "device"
    TrustedState(state_dir).init(example_app["root"])
    lines: list[str] = []
    installer = Installer(state_dir=state_dir, runtime=DockerRuntime(docker_engine.client), profile=CPU, log=lines.append)
    try:
        alone = installer.install(example_app["1.0.0"])  # the example needs its site's api-token
        assert not alone.committed and "needs secret api-token" in alone.reason
        lines.clear()
        good = installer.install(example_app["1.0.0"], overlay=enroll_with_overlay(example_app, state_dir, tmp_path))
        assert good.committed and good.release.slot == "a"
        assert [line.split("]")[0] for line in lines if line.startswith("[")] == [f"[{i}/7" for i in range(1, 8)]
        golden = (EXAMPLE / "golden/input.txt").read_bytes()
        status, body = answer("/infer", golden, token=TOKEN)
        assert status == 200 and json.loads(body)["label"] == json.loads((EXAMPLE / "golden/expected.json").read_text())["label"]
        assert answer("/infer", golden)[0] == 401 and answer("/infer", golden, token="guess")[0] == 401  # no token, no answer
        assert answer("/healthz")[0] == 200

        broken = installer.install(example_app["1.0.1"])  # carries the running overlay
        assert not broken.committed and broken.release.slot == "b" and broken.release.overlay == "1.0.0"
        assert "failed" in broken.reason
        state = only_app(state_dir).load()
        assert state.phase == Phase.ROLLED_BACK and state.current is not None and state.current.version == "1.0.0"
        assert failure_key(broken.release) in state.failed
        assert serving() == 200  # the previous release answers again
        containers = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        assert {c.labels["dev.sealift.slot"] for c in containers} == {"a"}

        with pytest.raises(Conflict, match="failed its health checks before"):
            installer.install(example_app["1.0.1"])
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)
        unmount_secrets(state_dir)
