"""The OCI wire model Sealift reads and writes: media and artifact types, annotation keys,
content descriptors, canonical JSON, and the one streaming hash of a blob.

A bundle, an overlay and a medium are OCI content: an image layout whose ``index.json`` names a
top image index, manifests that name blobs, every one addressed by its sha256 digest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from updater.errors import Refused, SealiftError

__all__ = [
    "ANNOTATION",
    "CHUNK",
    "LAYOUT_VERSION",
    "MAX_JSON_BYTES",
    "MAX_METADATA_BYTES",
    "MEDIA",
    "METADATA_DIR",
    "METADATA_NAME",
    "Advance",
    "Descriptor",
    "canonical_json",
    "check_digest",
    "json_object",
]

CHUNK = 1 << 20
LAYOUT_VERSION = "1.0.0"
MAX_JSON_BYTES = 4 << 20  # manifests, indexes and descriptors are small; refuse huge ones
MAX_METADATA_BYTES = 16 << 20  # a signed TUF metadata file: larger than any ngclient would accept
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
METADATA_DIR = "tuf"  # signed TUF metadata travels beside the layout, outside its content-addressed part
METADATA_NAME = re.compile(r"(?:[1-9][0-9]{0,9}\.)?[a-z][a-z0-9._-]{0,99}\.json")  # N.role.json: no leading zeros
Advance = Callable[[int], None]  # told of every piece of bytes done


class MEDIA:
    """Media and artifact types of bundles and overlays."""

    INDEX = "application/vnd.oci.image.index.v1+json"
    MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    EMPTY = "application/vnd.oci.empty.v1+json"
    BUNDLE = "application/vnd.sealift.bundle.v1"
    PAYLOAD = "application/vnd.sealift.payload.v1"
    DESCRIPTOR = "application/vnd.sealift.descriptor.v1+json"
    MODEL = "application/vnd.sealift.model.v1"
    CONFIG = "application/vnd.sealift.config.v1"
    OVERLAY = "application/vnd.sealift.overlay.v1"
    OVERLAY_PAYLOAD = "application/vnd.sealift.overlay-payload.v1"
    OVERLAY_DESCRIPTOR = "application/vnd.sealift.overlay.descriptor.v1+json"
    SEALED_SECRETS = "application/vnd.sealift.sealed-secrets.v1+json"
    TUF_METADATA = "application/vnd.sealift.tuf.metadata.v1+json"
    SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle+json"
    SIGSTORE_ROOT = "application/vnd.dev.sigstore.trustedroot+json"
    TAR_SUFFIX = ".tar"
    ZSTD_SUFFIX = "+zstd"


class ANNOTATION:
    """Annotation keys Sealift writes."""

    NAME = "dev.sealift.name"
    VERSION = "dev.sealift.version"
    PROFILE = "dev.sealift.profile"
    COMPATIBLE = "dev.sealift.compatible"
    SITE = "dev.sealift.site"
    FITS = "dev.sealift.fits"
    IMAGE = "dev.sealift.image"
    ROLE = "dev.sealift.role"
    UNCOMPRESSED_DIGEST = "dev.sealift.uncompressed.digest"
    UNCOMPRESSED_SIZE = "dev.sealift.uncompressed.size"
    CREATED = "org.opencontainers.image.created"
    TITLE = "org.opencontainers.image.title"
    REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True, kw_only=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False)
    platform: dict[str, str] | None = field(default=None, compare=False)
    artifact_type: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            data["artifactType"] = self.artifact_type
        if self.platform:
            data["platform"] = self.platform
        if self.annotations:
            data["annotations"] = self.annotations
        return data

    @classmethod
    def from_json(cls, data: object, *, where: str) -> Descriptor:
        """Parse a descriptor, refusing anything malformed with a message naming ``where``."""
        if not isinstance(data, dict):
            raise Refused(f"{where}: descriptor is not a JSON object")
        media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise Refused(f"{where}: descriptor needs a mediaType and a sha256 digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise Refused(f"{where}: descriptor {digest} has no valid size")
        annotations = data.get("annotations") or {}
        platform = data.get("platform")
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            raise Refused(f"{where}: annotations of {digest} are not a string map")
        if platform is not None and not isinstance(platform, dict):
            raise Refused(f"{where}: platform of {digest} is not an object")
        artifact_type = data.get("artifactType")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=annotations,
            platform=platform,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        )


def canonical_json(data: object) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_object(data: bytes, where: str, error: type[SealiftError] = Refused) -> dict[str, Any]:
    """``data`` parsed as a JSON object; ``error`` naming ``where`` if it is not one."""
    try:
        parsed = json.loads(data)
    except ValueError as e:  # malformed JSON, bad UTF-8, integers too long to convert
        raise error(f"{where}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise error(f"{where}: JSON nested too deeply") from e
    if not isinstance(parsed, dict):
        raise error(f"{where}: not a JSON object")
    return parsed


def check_digest(digest: str) -> str:
    """``digest`` if it is a well-formed sha256 digest; Refused otherwise."""
    if not _DIGEST.fullmatch(digest):
        raise Refused(f"unsupported or malformed digest {digest[:80]!r}")
    return digest
