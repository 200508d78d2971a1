"""``docker://HOST/REPO[:TAG|@DIGEST]``: an image to build from, read from a registry.

Kept apart from the other image sources so that a build that reads none from a registry never
loads the registry client.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from bundler.sources import ResolvedImage, check_config_platform, parse_manifest, select_platform, verified
from updater.errors import InputError
from updater.oci import MEDIA, Descriptor, json_object
from updater.profiles import Platform
from updater.registry import RegistryClient, parse_reference

__all__ = ["RegistrySource"]


class RegistrySource:
    """``docker://HOST/REPO[:TAG|@DIGEST]``: an image to build from."""

    def __init__(self, reference: str, *, plain_http: bool) -> None:
        self.reference = reference
        ref = parse_reference(reference, what="image")
        self.client = RegistryClient(ref, plain_http=plain_http, what=f"image {reference}")

    def resolve(self, platform: Platform) -> ResolvedImage:
        tag_or_digest = self.client.ref.digest or self.client.ref.tag or "latest"
        body, media_type, digest = self._manifest(tag_or_digest)
        entry = Descriptor(media_type=media_type, digest=digest, size=len(body))
        if media_type in (MEDIA.INDEX, MEDIA.DOCKER_LIST):
            entry = select_platform(self.reference, json_object(body, f"image {self.reference}: manifest", InputError), platform)
            body, media_type, _ = self._manifest(entry.digest)
            verified(self.reference, body, entry)
        image = parse_manifest(self.reference, body, entry)
        with self.open_blob(image.config) as stream:
            check_config_platform(self.reference, verified(self.reference, stream.read(image.config.size + 1), image.config), platform)
        return image

    def _manifest(self, ref: str) -> tuple[bytes, str, str]:
        found = self.client.get_manifest(ref)
        if found is None:
            raise InputError(f"image {self.reference}: the registry has no manifest {ref}")
        return found

    @contextmanager
    def open_blob(self, blob: Descriptor) -> Iterator[IO[bytes]]:
        with self.client.open_blob(blob.digest) as stream:
            yield stream

    def locate_blob(self, blob: Descriptor) -> None:
        return None

    def close(self) -> None:
        self.client.close()
