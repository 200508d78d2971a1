"""Loading a bundle's container images into the local Docker engine, IDs intact.

Docker 20.10 cannot load an OCI image layout, but it loads a ``docker save`` archive whose
``manifest.json`` names the config and layer files: the bundle's own blobs, byte for byte,
streamed straight from the bundle. The loaded image's ID is then the config digest the bundle
recorded, which is checked; newer engines load the same archive.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from updater.bundle import BundleInfo
from updater.errors import EngineFault
from updater.layout import LayoutReader, open_layout
from updater.oci import CHUNK

__all__ = ["image_tag", "load_images"]


def image_tag(info: BundleInfo, image: str) -> str:
    """The tag a release's image gets: ``sealift/NAME-IMAGE:VERSION-PROFILE``."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{info.version}-{info.profile}")[:128]
    return f"sealift/{info.name}-{image}:{tag}"


def load_images(client: Any, bundle: Path, info: BundleInfo) -> dict[str, str]:
    """Load every image of the release that the engine lacks; return image name -> image ID."""
    import docker.errors
    import requests

    loaded: dict[str, str] = {}
    with open_layout(bundle) as reader:
        for image in info.descriptor["images"]:
            image_id, tag = image["config"], image_tag(info, image["name"])
            if not _present(client, image_id):
                try:
                    client.api.load_image(_archive(reader, image["manifest"], tag), quiet=True)
                except (docker.errors.DockerException, requests.RequestException) as e:
                    raise EngineFault(f"image {image['name']} ({image_id[:19]}): the engine refused to load it ({e})") from e
                if not _present(client, image_id):
                    raise EngineFault(f"image {image['name']}: loaded, but the engine has no image {image_id[:19]}")
            client.api.tag(image_id, *tag.rsplit(":", 1))
            loaded[image["name"]] = image_id
    return loaded


def _present(client: Any, image_id: str) -> bool:
    import docker.errors

    try:
        return bool(client.images.get(image_id).id == image_id)
    except docker.errors.ImageNotFound:
        return False


def _archive(reader: LayoutReader, manifest_digest: str, tag: str) -> Iterator[bytes]:
    """A ``docker save`` archive of one image, streamed from the bundle's blobs."""
    with reader.open_blob(manifest_digest) as stream:
        manifest = json.loads(stream.read())
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    names = [f"blobs/sha256/{d.removeprefix('sha256:')}" for d in digests]
    index = json.dumps([{"Config": names[0], "RepoTags": [tag], "Layers": names[1:]}]).encode()
    yield from _member("manifest.json", len(index), iter([index]))
    for digest, name in dict(zip(digests, names, strict=True)).items():
        size = reader.blob_size(digest) or 0
        yield from _member(name, size, _chunks(reader, digest))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _member(name: str, size: int, content: Iterator[bytes]) -> Iterator[bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    yield from content
    yield b"\0" * (-size % tarfile.BLOCKSIZE)


def _chunks(reader: LayoutReader, digest: str) -> Iterator[bytes]:
    with reader.open_blob(digest) as stream:
        while chunk := stream.read(CHUNK):
            yield chunk
