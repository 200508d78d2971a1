"""The container engine as the installer sees it: a small protocol, so the install logic is written
and tested on its own; :mod:`updater.docker_runtime` implements it on the Docker Engine.

A release's containers are named ``sealift-APP-SLOT-SERVICE`` and labelled with the app, slot,
version and service, so the updater always finds what it started; models and configs are mounted
read-only from the slot, the opened secrets from the tmpfs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from updater.appdef import App
from updater.layout import LayoutReader
from updater.slots import Release

__all__ = [
    "IMAGE_REPOSITORY",
    "LABEL_APP",
    "LABEL_SERVICE",
    "LABEL_SLOT",
    "LABEL_VERSION",
    "ContainerState",
    "EngineFeatures",
    "Image",
    "Published",
    "Runtime",
    "Usage",
    "image_tag",
]

LABEL_APP = "dev.sealift.app"
LABEL_SLOT = "dev.sealift.slot"
LABEL_VERSION = "dev.sealift.version"
LABEL_SERVICE = "dev.sealift.service"
IMAGE_REPOSITORY = "sealift/"  # every image the updater loads is tagged sealift/APP-IMAGE:VERSION-PROFILE


@dataclass(frozen=True)
class Published:
    """Where a container's port is reachable on the host: the address it is bound to, and the port."""

    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class ContainerState:
    """One service's container as the engine sees it at one look."""

    service: str
    status: str  # created, running, restarting, exited, ...
    exit_code: int = 0
    health: str | None = None  # the container's own HEALTHCHECK: starting, healthy, unhealthy; None without one
    health_output: str = ""  # what the last HEALTHCHECK run printed
    restarts: int = 0
    ports: Mapping[str, tuple[Published, ...]] = field(default_factory=dict)  # "8080/tcp" -> where it is published
    host_network: bool = False  # on the host's network: its ports are the host's own
    address: str = ""  # its address on its release's own network, which the host (and the ingress) reaches

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True, kw_only=True)
class Usage:
    """What one service's container has used, at one look: CPU time since it started (a rate is the
    difference of two looks), and the memory it holds now (the page cache left out)."""

    cpu_seconds: float
    memory_bytes: int


@dataclass(frozen=True, kw_only=True)
class EngineFeatures:
    """The container runtimes an engine has registered (``runc``, ``nvidia``), whether it resolves CDI
    devices, and the CPUs its containers may use."""

    runtimes: frozenset[str]
    cdi: bool = False
    cpus: int | None = None


@dataclass(frozen=True, kw_only=True)
class Image:
    """One image of a bundle: its name in the app, its manifest's digest, its config's digest (the
    image ID an engine gives it), and the tag it gets on this device."""

    name: str
    manifest: str
    config: str
    tag: str


def image_tag(app: str, image: str, version: str, profile: str) -> str:
    """The tag a release's image gets on the device: ``sealift/APP-IMAGE:VERSION-PROFILE``."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{version}-{profile}")[:128]
    return f"{IMAGE_REPOSITORY}{app}-{image}:{tag}"


class Runtime(Protocol):
    """Load images, run a release's containers, look at them, and clean up: all the installer asks of an engine.

    Every fault of the engine is an EngineFault naming what it was asked to do.
    """

    def load_images(self, reader: LayoutReader, images: Sequence[Image]) -> None:
        """Load each image the engine lacks from the bundle's blobs and tag it; the loaded ID must be its config digest."""
        ...

    def start(self, release: Release, app: App, slot_dir: Path, images: Mapping[str, str], *,
              environment: Mapping[str, Mapping[str, str]] | None = None, secrets: Path | None = None) -> None:
        """Create the release's networks and start its services, dependencies first. ``images`` maps an image
        name to its ID; ``environment`` adds values per service (a site overlay's); ``secrets`` is the folder
        holding a folder per service of opened secrets, mounted read-only at ``/run/secrets/TARGET``."""
        ...

    def stop(self, app: str, slot: str) -> None:
        """Stop and remove every container and network of one slot of the app (none there is fine)."""
        ...

    def containers(self, app: str, slot: str) -> dict[str, ContainerState]:
        """Service name -> its container's state, for one slot of the app."""
        ...

    def usage(self, app: str, slot: str) -> dict[str, Usage]:
        """Service name -> what its running container has used, for one slot of the app."""
        ...

    def run_in(self, app: str, slot: str, service: str, command: Sequence[str]) -> tuple[int, str]:
        """Run ``command`` in the service's running container: its exit code and output."""
        ...

    def images(self, app: str) -> dict[str, str]:
        """The tags given to images loaded for ``app``, with each one's image ID (what garbage collection may remove)."""
        ...

    def remove_image(self, tag: str) -> None:
        """Remove a tag; the image goes with its last tag."""
        ...

    def features(self) -> EngineFeatures:
        """What the engine offers containers beyond the default: its runtimes, and whether it knows CDI devices."""
        ...
