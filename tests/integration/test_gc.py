"""Garbage collection on the real engine: images no kept release uses go; the others stay."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.realparts import DockerEngine, busybox_image
from updater.gc import collect_images
from updater.slots import DeviceState, Release, Slots


@pytest.mark.docker
def test_images_of_releases_neither_running_nor_kept_for_rollback_are_removed(tmp_path: Path, docker_engine: DockerEngine) -> None:
    client = docker_engine.client
    base = busybox_image(docker_engine, "sealift-gc-src/base:1")
    ids = {}
    for name in ("old", "previous", "current"):  # three distinct images, built offline on the base
        dockerfile = io.BytesIO(f"FROM {base}\nLABEL release={name}\n".encode())
        image, _ = client.images.build(fileobj=dockerfile, tag=f"sealift/gc-app-{name}:1", rm=True)
        ids[name] = image.id
    assert len(set(ids.values())) == 3
    slots = Slots(tmp_path / "device")
    for slot, name in (("a", "current"), ("b", "previous")):
        slots.slot_dir(slot).mkdir(parents=True)
        (slots.slot_dir(slot) / "descriptor.json").write_text(json.dumps({"images": [{"name": "app", "config": ids[name]}]}))
    release = {"name": "gc-app", "version": "1", "profile": "x86_64-cpu", "digest": "sha256:" + "0" * 64}
    state = DeviceState(current=Release(**release, slot="a"), previous=Release(**release, slot="b"))
    removed = collect_images(client, slots, state)
    remaining = {image.id for image in client.images.list(name="sealift/gc-app-*")}
    assert removed == [ids["old"]]
    assert remaining == {ids["current"], ids["previous"]}
