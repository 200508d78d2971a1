"""The engine protocol on the real engine (Debian's Docker 20.10): images load with the bundle's own
IDs, garbage collection removes only what no kept release uses, and an engine that does not answer
is one line naming where it was looked for."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import project
from tests.realparts import DockerEngine, busybox_image
from updater.bundle import BundleInfo, check_bundle
from updater.docker_runtime import DockerRuntime
from updater.errors import EngineFault
from updater.gc import collect_images
from updater.install import images_of
from updater.layout import open_layout
from updater.profiles import builtin_profile_dir, load_profiles

PROFILES = load_profiles([builtin_profile_dir()])


def bundle_from(tmp_path: Path, source: str) -> tuple[Path, BundleInfo]:
    spec_path = project(tmp_path / "src")
    spec_path.write_text(spec_path.read_text().replace("oci:images/app:1.0.0", source))
    spec = load_spec(spec_path, allowed_dirs=[tmp_path])  # an archive saved beside the project
    (b,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=tmp_path / "out", epoch=0))
    return b.path, check_bundle(b.path).bundle


def load(engine: DockerEngine, bundle: Path, info: BundleInfo) -> None:
    with open_layout(bundle) as reader:
        DockerRuntime(engine.client).load_images(reader, images_of(info))


@pytest.mark.docker
def test_an_image_from_docker_save_loads_with_its_id_and_runs(tmp_path: Path, docker_engine: DockerEngine) -> None:
    image_id = busybox_image(docker_engine, "sealift-test/load-src:1")
    archive = tmp_path / "saved.tar"
    with open(archive, "wb") as f:
        for chunk in docker_engine.client.images.get(image_id).save(named=True):
            f.write(chunk)
    bundle, info = bundle_from(tmp_path, f"docker-archive:{archive}:sealift-test/load-src:1")
    docker_engine.client.images.remove(image_id, force=True)
    load(docker_engine, bundle, info)
    (image,) = images_of(info)
    assert image.config == image_id and image.tag in docker_engine.client.images.get(image_id).tags
    output = docker_engine.client.containers.run(image_id, network_mode="none", remove=True)
    assert output.strip() == b"hello"
    assert DockerRuntime(docker_engine.client).images(info.name) == {image.tag: image_id}
    load(docker_engine, bundle, info)  # already there: nothing to load, and nothing fails


@pytest.mark.docker
def test_an_oci_image_with_gzip_layers_loads_with_its_config_digest_as_id(tmp_path: Path, docker_engine: DockerEngine) -> None:
    bundle, info = bundle_from(tmp_path, "oci:images/app:1.0.0")
    load(docker_engine, bundle, info)
    config = info.descriptor.images[0].config
    inspected = docker_engine.client.images.get(config).attrs
    assert inspected["Architecture"] == "amd64" and inspected["Config"]["Cmd"] == ["/app/run"]


@pytest.mark.docker
def test_images_of_releases_neither_running_nor_kept_for_rollback_are_removed(tmp_path: Path, docker_engine: DockerEngine) -> None:
    client = docker_engine.client
    base = busybox_image(docker_engine, "sealift-gc-src/base:1")
    ids = {}
    for name in ("old", "previous", "current"):  # three distinct images, built offline on the base
        dockerfile = io.BytesIO(f"FROM {base}\nLABEL release={name}\n".encode())
        image, _ = client.images.build(fileobj=dockerfile, tag=f"sealift/gc-app-{name}:1", rm=True)
        ids[name] = image.id
    client.images.get(ids["current"]).tag("sealift/gc-app-current", "0")  # an older release's tag on an unchanged image
    assert len(set(ids.values())) == 3
    keep = {"sealift/gc-app-current:1", "sealift/gc-app-previous:1"}
    removed = collect_images(DockerRuntime(client), "gc-app", keep)
    assert removed == ["sealift/gc-app-current:0", "sealift/gc-app-old:1"]
    assert DockerRuntime(client).images("gc-app") == {"sealift/gc-app-current:1": ids["current"],
                                                     "sealift/gc-app-previous:1": ids["previous"]}
    assert {image.id for image in client.images.list(name="sealift/gc-app-*")} == {ids["current"], ids["previous"]}


def test_an_engine_that_does_not_answer_is_one_line_naming_where_it_was_looked_for(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(EngineFault) as caught:
        DockerRuntime.connect()
    message = caught.value.diagnostics()
    assert f"unix://{tmp_path}/no-engine.sock" in message and "is dockerd running?" in message and "\n" not in message
