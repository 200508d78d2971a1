"""Small fakes of the real interfaces, for unit tests; integration tests cover the real parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from updater.appdef import App
from updater.errors import EngineFault
from updater.layout import LayoutReader
from updater.runtime import ContainerState, EngineFeatures, Image, Usage
from updater.slots import Release

__all__ = ["FakeEngine", "NoEngine"]


class FakeEngine:
    """The engine protocol (:class:`updater.runtime.Runtime`) in memory. ``health`` gives each service's
    HEALTHCHECK verdict by version; ``refuse_start`` names versions the engine will not start; with
    ``refuse_load`` it loads no image."""

    def __init__(self, *, health: Mapping[str, str] | None = None, refuse_start: Sequence[str] = (),
                 refuse_load: bool = False, runtimes: Sequence[str] = ("runc",)) -> None:
        self.health = dict(health or {})
        self.runtimes = frozenset(runtimes)
        self.refuse_start = set(refuse_start)
        self.refuse_load = refuse_load
        self.tags: dict[str, str] = {}  # tag -> image ID
        self.running: dict[tuple[str, str], tuple[str, dict[str, ContainerState]]] = {}  # (app, slot) -> (version, services)

    def load_images(self, reader: LayoutReader, images: Sequence[Image]) -> None:
        if self.refuse_load:
            raise EngineFault(f"image {images[0].name}: the engine refused to load it (no space left on device)")
        for image in images:
            assert reader.blob_size(image.manifest) is not None and reader.blob_size(image.config) is not None
            self.tags[image.tag] = image.config

    def start(self, release: Release, app: App, slot_dir: Path, images: Mapping[str, str], *,
              environment: Mapping[str, Mapping[str, str]] | None = None, secrets: Path | None = None) -> None:
        if release.version in self.refuse_start:
            raise EngineFault(f"{release.name} {release.version}: the engine could not start it (no such device)")
        assert all(images[s.image] in self.loaded for s in app.services), "started before its images were loaded"
        health = self.health.get(release.version, "healthy")
        self.running[(release.name, release.slot)] = (release.version, {
            s.name: ContainerState(service=s.name, status="running", health=health) for s in app.services})

    def stop(self, app: str, slot: str) -> None:
        self.running.pop((app, slot), None)

    def containers(self, app: str, slot: str) -> dict[str, ContainerState]:
        return dict(self.running.get((app, slot), ("", {}))[1])

    def usage(self, app: str, slot: str) -> dict[str, Usage]:
        return {name: Usage(cpu_seconds=1.5, memory_bytes=64 << 20) for name, c in self.containers(app, slot).items() if c.running}

    def run_in(self, app: str, slot: str, service: str, command: Sequence[str]) -> tuple[int, str]:
        return 0, ""

    @property
    def loaded(self) -> set[str]:
        """The IDs of the images the engine holds (an image goes with its last tag)."""
        return set(self.tags.values())

    def images(self, app: str) -> dict[str, str]:
        return {tag: image for tag, image in self.tags.items() if tag.startswith(f"sealift/{app}-")}

    def remove_image(self, tag: str) -> None:
        del self.tags[tag]

    def features(self) -> EngineFeatures:
        return EngineFeatures(runtimes=self.runtimes)


class NoEngine(FakeEngine):
    """For an installer that must never reach the engine (a refusal, a poll that stops before installing)."""

    def load_images(self, reader: LayoutReader, images: Sequence[Image]) -> None:
        raise AssertionError("the engine was reached")

    def start(self, release: Release, app: App, slot_dir: Path, images: Mapping[str, str], *,
              environment: Mapping[str, Mapping[str, str]] | None = None, secrets: Path | None = None) -> None:
        raise AssertionError("the engine was reached")
