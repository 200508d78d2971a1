"""Image sources against a real Docker engine and a real registry (CNCF distribution)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import docker_archive_from_bundle, image_layout, project
from tests.realparts import DockerEngine, Registry, busybox_image, push_to_registry
from updater.bundle import BundleInfo
from updater.errors import DeliveryError, InputError, SealiftError
from updater.profiles import builtin_profile_dir, load_profiles

PROFILES = load_profiles([builtin_profile_dir()])


def build_with_source(tmp_path: Path, source: str, profiles: tuple[str, ...], *, plain_http: bool = False) -> list[BundleInfo]:
    spec_path = project(tmp_path / "src")
    spec_path.write_text(spec_path.read_text().replace("oci:images/app:1.0.0", source))
    spec = load_spec(spec_path, allowed_dirs=[tmp_path.parent])  # an archive saved beside the project
    options = BuildOptions(out=tmp_path / "out", epoch=0, plain_http=plain_http)
    return [b.info for b in build_bundles(spec, select_profiles(spec, PROFILES, profiles), options)]


def image_entry(info: BundleInfo) -> dict:  # type: ignore[type-arg]
    return dict(vars(info.descriptor.images[0]))


@pytest.mark.docker
def test_local_engine_image_keeps_its_id_through_the_bundle(tmp_path: Path, docker_engine: DockerEngine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    image_id = busybox_image(docker_engine, "sealift-test/daemon-src:1")
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    (info,) = build_with_source(tmp_path, "docker-daemon:sealift-test/daemon-src:1", ("x86_64-cpu",))
    assert image_entry(info)["config"] == image_id
    docker_engine.client.images.remove(image_id, force=True)
    bundle = tmp_path / "out" / "demo-1.2.0-x86_64-cpu"
    archive = docker_archive_from_bundle(bundle, image_entry(info)["manifest"], "sealift-test/reloaded:1")
    (loaded,) = docker_engine.client.images.load(archive)
    assert loaded.id == image_id
    run = docker_engine.client.containers.run("sealift-test/reloaded:1", network_mode="none", remove=True)
    assert run.strip() == b"hello"


@pytest.mark.docker
def test_docker_save_archive_is_a_source(tmp_path: Path, docker_engine: DockerEngine) -> None:
    image_id = busybox_image(docker_engine, "sealift-test/archive-src:2")
    archive = tmp_path / "saved.tar"
    with open(archive, "wb") as f:
        for chunk in docker_engine.client.images.get("sealift-test/archive-src:2").save(named=True):
            f.write(chunk)
    (info,) = build_with_source(tmp_path, f"docker-archive:{archive}:sealift-test/archive-src:2", ("x86_64-cpu",))
    assert image_entry(info)["config"] == image_id
    with pytest.raises(InputError, match=r"reference nope:1 not found \(the archive has: sealift-test/archive-src:2\)"):
        build_with_source(tmp_path / "again", f"docker-archive:{archive}:nope:1", ("x86_64-cpu",))


@pytest.mark.docker
def test_image_missing_from_the_engine_is_a_clear_error(tmp_path: Path, docker_engine: DockerEngine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    with pytest.raises(InputError, match="not found in the local Docker engine"):
        build_with_source(tmp_path, "docker-daemon:sealift-test/absent:1", ("x86_64-cpu",))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.registry
def test_multi_arch_registry_image_gives_each_profile_its_platform_manifest(tmp_path: Path, registry: Registry) -> None:
    layout = image_layout(tmp_path / "layout", marker="registry")
    push_to_registry(f"oci:{layout}:1.0.0", f"{registry.address}/test/app:1.0.0", all_images=True)
    top = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    per_arch = {m["platform"]["architecture"]: m["digest"]
                for m in json.loads((layout / "blobs/sha256" / top.removeprefix("sha256:")).read_bytes())["manifests"]}
    infos = build_with_source(tmp_path, f"docker://{registry.address}/test/app:1.0.0", ("x86_64-cpu", "jetson-orin"),
                              plain_http=True)
    assert [image_entry(i)["manifest"] for i in infos] == [per_arch["amd64"], per_arch["arm64"]]
    by_digest = build_with_source(tmp_path / "pinned", f"docker://{registry.address}/test/app@{top}", ("jetson-orin",),
                                  plain_http=True)
    assert image_entry(by_digest[0])["manifest"] == per_arch["arm64"]


@pytest.mark.registry
@pytest.mark.parametrize(("reference", "plain_http", "fault", "message"), [
    ("docker://{registry}/test/never-pushed:1", True, InputError, "the registry has no manifest 1"),
    ("docker://127.0.0.1:9/test/app:1", True, DeliveryError, "cannot reach 127.0.0.1:9"),  # an outage, not the spec's fault
    ("docker://{registry}/test/never-pushed:1", False, DeliveryError, "TLS handshake failed; use --plain-http"),
], ids=["unknown-tag", "nothing-listening", "tls-to-plain-http"])
def test_unresolvable_registry_reference_is_a_clear_error(tmp_path: Path, registry: Registry, reference: str,
                                                           plain_http: bool, fault: type[SealiftError], message: str) -> None:
    with pytest.raises(fault) as caught:
        build_with_source(tmp_path, reference.format(registry=registry.address), ("x86_64-cpu",), plain_http=plain_http)
    assert message in caught.value.diagnostics()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
