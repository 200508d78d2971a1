"""Site overlays on the real engine: an application release and its overlay installed as one
transaction, the secret at /run/secrets in the container (0400, from a tmpfs), the site's values in
its environment; a new overlay alone rotates the secret without loading images; an overlay for
another site or a tampered one is refused with the running release and its secret untouched; and
no file the builder or the device writes holds the secret."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bundler.devices import Inventory
from bundler.keys import Keyring
from bundler.overlay import build_overlay
from bundler.repo import Repository
from bundler.spec import load_spec
from tests.builders import EXAMPLE_DIR, example_releases, healthz, only_app, unmount_secrets
from tests.realparts import DockerEngine
from updater.docker_runtime import DockerRuntime
from updater.errors import SealiftError
from updater.identity import DeviceIdentity
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]
pytestmark = pytest.mark.docker
TOKENS = ("tok-plant7-first-6b1f0e", "tok-plant7-rotated-93ac2d")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Releases 1.0.0 and 1.1.0 whose service declares api-token, signed; a device enrolled at plant-7."""
    root = tmp_path_factory.mktemp("overlays")
    built = example_releases(root, python=sys.executable, secrets=True, versions=("1.0.0", "1.1.0"))
    state_dir = root / "device"
    TrustedState(state_dir).init(built["root"])
    record = DeviceIdentity(state_dir).enroll(site="plant-7", profile="x86_64-cpu")
    (root / "record.json").write_text(json.dumps(record))
    Inventory(root / "devices.yaml").add(root / "record.json")
    return {**built, "state": state_dir, "work": root}


def overlay(site: dict[str, Path], version: str, token: str, monkeypatch: pytest.MonkeyPatch, *, for_site: str = "plant-7",
            sign: bool = True, environment: str = "") -> Path:
    """Build (and sign, with the releases' repository) the overlay ``version`` carrying ``token``."""
    work = site["work"]
    spec = work / "sealift-1.0.0.yaml"
    (work / "sites").mkdir(exist_ok=True)
    extra = f", {environment}" if environment else ""
    (work / "sites" / f"{for_site}.yaml").write_text(f"version: {version}\nfits: '>=1.0.0 <2.0.0'\n"
                                                      f"environment:\n  vision: {{SITE_ID: {for_site}{extra}}}\n")
    monkeypatch.setenv("VISION_API_TOKEN", token)
    if for_site != "plant-7":
        other = DeviceIdentity(work / f"device-{for_site}").enroll(site=for_site, profile="x86_64-cpu")
        (work / f"{for_site}.json").write_text(json.dumps(other))
        Inventory(work / "devices.yaml").add(work / f"{for_site}.json")
    path, _ = build_overlay(load_spec(spec, allowed_dirs=[EXAMPLE_DIR]), for_site, inventory=work / "devices.yaml", out=work / "overlays")
    if sign:
        _repository(site).add([path])
    return path


def _repository(site: dict[str, Path]) -> Repository:
    """The repository that signed the releases (tests.builders.signed)."""
    keys = Keyring(site["work"] / "signing" / "keys", passphrase=lambda: "test passphrase")
    return Repository(site["root"].parent.parent, keys)


def in_container(engine: DockerEngine, command: str, *, user: str = "") -> str:
    (container,) = engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
    code, output = container.exec_run(["sh", "-c", command], user=user)
    assert code == 0, output
    return str(output.decode())


def test_a_release_with_its_overlay_then_a_rotation_then_refusals(site: dict[str, Path], docker_engine: DockerEngine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    installer = Installer(state_dir=site["state"], runtime=DockerRuntime(docker_engine.client), profile=CPU)
    try:
        first = overlay(site, "1.0.0", TOKENS[0], monkeypatch)
        alone = installer.install(site["1.0.0"])  # the app alone cannot start without its secret: rolled back
        assert not alone.committed and "needs secret api-token, and no overlay on this device provides it" in alone.reason
        outcome = installer.install(site["1.0.0"], overlay=first)  # the app failed alone, not with its overlay
        assert outcome.committed and outcome.release.overlay == "1.0.0" and healthz() == 200
        assert in_container(docker_engine, "cat /run/secrets/api-token") == TOKENS[0]
        assert in_container(docker_engine, "ls -l /run/secrets/api-token").startswith("-r--------")
        assert in_container(docker_engine, "echo $SITE_ID").strip() == "plant-7"

        # an application update carries the overlay (it fits 1.1.0); what ships last carries the newest metadata
        _repository(site).add([site["1.1.0"]])
        assert installer.install(site["1.1.0"]).committed
        assert in_container(docker_engine, "cat /run/secrets/api-token") == TOKENS[0]
        # 1.1.0 declares the token for uid and gid 1000, mode 0440: that user reads it, another does not
        assert in_container(docker_engine, "stat -c '%a %u %g' /run/secrets/api-token").strip() == "440 1000 1000"
        assert in_container(docker_engine, "cat /run/secrets/api-token", user="1000:1000") == TOKENS[0]
        with pytest.raises(AssertionError, match="Permission denied"):
            in_container(docker_engine, "cat /run/secrets/api-token", user="1001:1001")

        # rotation: a new overlay alone; no image is loaded again
        images_before = {i.id for i in docker_engine.client.images.list()}
        rotated = overlay(site, "2.0.0", TOKENS[1], monkeypatch)
        lines: list[str] = []
        installer.log = lines.append
        outcome = installer.install(rotated)
        assert outcome.committed and outcome.release.version == "1.1.0" and outcome.release.overlay == "2.0.0"
        assert in_container(docker_engine, "cat /run/secrets/api-token") == TOKENS[1]
        assert {i.id for i in docker_engine.client.images.list()} == images_before
        assert "[3/7] load images: none, the release's images are loaded" in lines

        # a rotation whose values break the service rolls back to the previous overlay and its secret
        broken = overlay(site, "2.1.0", "tok-never-used", monkeypatch, environment="VISION_PORT: not-a-port")
        failed = installer.install(broken)
        assert not failed.committed and in_container(docker_engine, "cat /run/secrets/api-token") == TOKENS[1]
        state = only_app(site["state"]).load()
        assert state.current is not None and state.current.overlay == "2.0.0" and state.current.digest not in state.failed

        # refused, with the running release and its secret untouched: another site's, an older one, an unsigned one
        _repository(site).add([first])  # the older overlay with the newest metadata: only its version is wrong
        for bad, message in ((overlay(site, "3.0.0", "tok-other-site", monkeypatch, for_site="plant-9"), "site plant-9"),
                             (first, "overlay vision-app 1.0.0 for site plant-7 is older than 2.1.0"),  # 2.1.0 was accepted
                             (overlay(site, "4.0.0", "tok-unsigned", monkeypatch, sign=False), "carries no signed metadata")):
            with pytest.raises(SealiftError, match=message):
                installer.install(bad)
            assert in_container(docker_engine, "cat /run/secrets/api-token") == TOKENS[1] and healthz() == 200
        state = only_app(site["state"]).load()
        assert state.current is not None and state.current.overlay == "2.0.0"

        # nothing the builder or the device wrote holds a secret value (the tmpfs is memory, not a file here)
        run = site["state"] / "run"
        for path in site["work"].rglob("*"):
            if path.is_file() and run not in path.parents:
                data = path.read_bytes()
                assert not any(t.encode() in data for t in (*TOKENS, "tok-other-site", "tok-unsigned")), path
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)
        unmount_secrets(site["state"])

