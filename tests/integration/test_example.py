"""The example application, end to end: images made offline, a bundle per profile, and the
amd64 release really answering inference from its bundle on a real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zstandard

from tests.builders import docker_archive_from_bundle, make_example_images
from tests.envelope import result_of
from tests.realparts import DockerEngine
from updater.bundle import check_bundle

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "vision-app"
SHIPPED = ("arm64-coral", "jetson-orin", "rpi5-hailo8", "x86_64-cpu", "x86_64-intel-npu", "x86_64-nvidia")


@pytest.fixture(scope="module")
def example_images() -> Path:
    return make_example_images(sys.executable)


def sealift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bundler", *args], capture_output=True, text=True, check=False,
                          timeout=600, env={**os.environ, "SOURCE_DATE_EPOCH": "1767225600"})


@pytest.fixture(scope="module")
def bundles(example_images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("example") / "out"
    done = sealift("build", str(EXAMPLE / "sealift.yaml"), "--profile", "all", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    return {b["profile"]: b for b in result_of(done.stdout)}


def test_every_profile_gets_a_verified_bundle_for_its_platform(bundles: dict[str, dict]) -> None:  # type: ignore[type-arg]
    assert sorted(bundles) == list(SHIPPED)
    arches = {p: b["platform"]["architecture"] for p, b in bundles.items()}
    assert {p for p, a in arches.items() if a == "arm64"} == {"arm64-coral", "jetson-orin", "rpi5-hailo8"}
    done = sealift("verify", *(b["path"] for b in bundles.values()))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\nok ") + done.stdout.startswith("ok ") == len(SHIPPED)


def test_rebuilding_gives_byte_identical_bundles(bundles: dict[str, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    again = sealift("build", str(EXAMPLE / "sealift.yaml"), "--profile", "all", "--out", str(tmp_path), "--format", "tar", "--json")
    assert again.returncode == 0, again.stderr
    assert {b["profile"]: b["digest"] for b in result_of(again.stdout)} == {p: b["digest"] for p, b in bundles.items()}


def test_nvidia_profiles_carry_the_fp16_model(bundles: dict[str, dict]) -> None:  # type: ignore[type-arg]
    def model(profile: str) -> str:
        info = check_bundle(Path(bundles[profile]["path"])).bundle
        return str(next(m.content_digest for m in info.descriptor.models if m.name == "detector"))
    assert model("x86_64-nvidia") == model("jetson-orin") != model("x86_64-cpu") == model("rpi5-hailo8")


def _blob(bundle: Path, digest: str) -> Path:
    return bundle / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _payload_file(bundle: Path, descriptor: dict, role: str, name: str, dest: Path) -> Path:  # type: ignore[type-arg]
    entry = next(e for e in descriptor[role] if e["name"] == name)
    data = _blob(bundle, entry["digest"]).read_bytes()
    if entry["mediaType"].endswith("+zstd"):
        data = zstandard.ZstdDecompressor().decompress(data)
    dest.write_bytes(data)
    return dest


@pytest.mark.docker
def test_amd64_release_answers_golden_inference_from_its_bundle(bundles: dict[str, dict], docker_engine: DockerEngine,  # type: ignore[type-arg]
                                                                 tmp_path: Path) -> None:
    bundle = Path(bundles["x86_64-cpu"]["path"])
    descriptor = check_bundle(bundle).bundle.descriptor.data  # the descriptor as the bundle carries it
    docker_engine.client.images.load(docker_archive_from_bundle(bundle, descriptor["images"][0]["manifest"], "vision-app-test:1"))
    model = _payload_file(bundle, descriptor, "models", "detector", tmp_path / "detector.model")
    config = _payload_file(bundle, descriptor, "configs", "app-config", tmp_path / "app.conf")
    golden_in = _payload_file(bundle, descriptor, "configs", "golden-input", tmp_path / "in.txt").read_bytes()
    expected = json.loads(_payload_file(bundle, descriptor, "configs", "golden-expected", tmp_path / "out.json").read_text())
    service = descriptor["app"]["services"]["vision"]
    container = docker_engine.client.containers.run(
        "vision-app-test:1", detach=True, environment=service["environment"], ports={"8080/tcp": ("127.0.0.1", None)},
        volumes={str(model): {"bind": "/models/detector.model", "mode": "ro"},
                 str(config): {"bind": "/etc/vision/app.conf", "mode": "ro"}},
    )
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        _wait_healthy(f"http://127.0.0.1:{port}/healthz")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/infer", data=golden_in, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["label"] == expected["label"]
        assert all(abs(a - b) <= 0.01 for a, b in zip(answer["scores"], expected["scores"], strict=True))
    finally:
        container.remove(force=True)


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
