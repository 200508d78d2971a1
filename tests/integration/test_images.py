"""Loading a bundle's images into the real engine (Debian's Docker 20.10): IDs equal the bundle's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import project
from tests.realparts import DockerEngine, busybox_image
from updater.bundle import BundleInfo, check_bundle
from updater.images import image_tag, load_images
from updater.profiles import builtin_profile_dir, load_profiles

PROFILES = load_profiles([builtin_profile_dir()])


def bundle_from(tmp_path: Path, source: str) -> tuple[Path, BundleInfo]:
    spec_path = project(tmp_path / "src")
    spec_path.write_text(spec_path.read_text().replace("oci:images/app:1.0.0", source))
    spec = load_spec(spec_path)
    (b,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=tmp_path / "out", epoch=0))
    return b.path, check_bundle(b.path).bundle


@pytest.mark.docker
def test_an_image_from_docker_save_loads_with_its_id_and_runs(tmp_path: Path, docker_engine: DockerEngine) -> None:
    image_id = busybox_image(docker_engine, "sealift-test/load-src:1")
    archive = tmp_path / "saved.tar"
    with open(archive, "wb") as f:
        for chunk in docker_engine.client.images.get(image_id).save(named=True):
            f.write(chunk)
    bundle, info = bundle_from(tmp_path, f"docker-archive:{archive}:sealift-test/load-src:1")
    docker_engine.client.images.remove(image_id, force=True)
    loaded = load_images(docker_engine.client, bundle, info)
    assert loaded == {"app": image_id}
    assert image_tag(info, "app") in docker_engine.client.images.get(image_id).tags
    output = docker_engine.client.containers.run(image_id, network_mode="none", remove=True)
    assert output.strip() == b"hello"
    assert load_images(docker_engine.client, bundle, info) == {"app": image_id}  # already there: nothing to load


@pytest.mark.docker
def test_an_oci_image_with_gzip_layers_loads_with_its_config_digest_as_id(tmp_path: Path, docker_engine: DockerEngine) -> None:
    bundle, info = bundle_from(tmp_path, "oci:images/app:1.0.0")
    loaded = load_images(docker_engine.client, bundle, info)
    config = info.descriptor["images"][0]["config"]
    assert loaded == {"app": config}
    inspected = docker_engine.client.images.get(config).attrs
    assert inspected["Architecture"] == "amd64" and inspected["Config"]["Cmd"] == ["/app/run"]
