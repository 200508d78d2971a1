"""Signed TUF metadata in a registry: each file a small OCI artifact tagged ``tuf.NAME``
(``tuf.timestamp.json``, ``tuf.3.snapshot.json``), so a device needs nothing but the registry's
address and its trusted root."""

from __future__ import annotations

import re

from updater.content import checked_json
from updater.errors import InputError, Refused
from updater.oci import MAX_METADATA_BYTES, MEDIA, METADATA_NAME, Descriptor, json_object
from updater.registry import RegistryClient

__all__ = ["METADATA_TAG_PREFIX", "metadata_names", "metadata_tag", "read_metadata"]

METADATA_TAG_PREFIX = "tuf."
_TAG_SAFE = re.compile(r"[A-Za-z0-9._-]{1,124}")  # what a tag may hold after the prefix (the distribution spec's tag grammar)
_ENCODED = "x."  # tuf.x.HEX: a metadata file whose name a tag cannot spell (a delegated role named with '%' or '~')


def metadata_tag(name: str) -> str:
    """The tag a signed metadata file is published under: ``tuf.NAME``, or ``tuf.x.HEX`` when NAME holds
    characters a tag cannot (InputError when even that is longer than a tag may be)."""
    if _TAG_SAFE.fullmatch(name) and not name.startswith(_ENCODED):
        return METADATA_TAG_PREFIX + name
    tag = f"{METADATA_TAG_PREFIX}{_ENCODED}{name.encode().hex()}"
    if len(tag) > 128:
        raise InputError(f"metadata file {name[:60]!r}: its name is too long to publish as a registry tag")
    return tag


def _metadata_name(tag: str) -> str | None:
    """The metadata file a tag holds (None: not a metadata tag, or a malformed one)."""
    if not tag.startswith(METADATA_TAG_PREFIX):
        return None
    name = tag.removeprefix(METADATA_TAG_PREFIX)
    if name.startswith(_ENCODED):
        try:
            name = bytes.fromhex(name.removeprefix(_ENCODED)).decode()
        except ValueError:
            return None
    return name if METADATA_NAME.fullmatch(name) else None


def metadata_names(client: RegistryClient) -> list[str]:
    return sorted(name for tag in client.tags() if (name := _metadata_name(tag)) is not None)


def read_metadata(client: RegistryClient, name: str, *, limit: int = MAX_METADATA_BYTES) -> bytes | None:
    """The metadata file ``name`` published in the repository, or None if it has none by that name.

    Its bytes are checked against the digest its artifact names; whether they are trustworthy is
    for TUF to decide.
    """
    found = client.get_manifest(metadata_tag(name), accept=MEDIA.MANIFEST)
    if found is None:
        return None
    try:
        manifest = json_object(found[0], f"{client.what}: the artifact of metadata {name}")
        layer = Descriptor.from_json(manifest["layers"][0], where=f"{client.what}: metadata {name}")
    except (KeyError, IndexError, TypeError) as e:
        raise Refused(f"{client.what}: the artifact of metadata {name} is malformed") from e
    if manifest.get("artifactType") != MEDIA.TUF_METADATA or layer.size > limit:
        raise Refused(f"{client.what}: tag {metadata_tag(name)} is not a metadata artifact of at most {limit} bytes")
    with client.open_blob(layer.digest) as stream:
        data = stream.read(layer.size + 1)
    return checked_json(data, layer, f"{client.what}: metadata {name}")
