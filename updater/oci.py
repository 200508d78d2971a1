"""The OCI wire model Sealift reads and writes: media and artifact types, annotation keys,
content descriptors, canonical JSON, and the one streaming hash of a blob.

A bundle, an overlay and a medium are OCI content: an image layout whose ``index.json`` names a
top image index, manifests that name blobs, every one addressed by its sha256 digest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from updater.errors import Refused, SealiftError

__all__ = [
    "ANNOTATION",
    "CHUNK",
    "LAYOUT_VERSION",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "MEDIA",
    "METADATA_DIR",
    "METADATA_NAME",
    "Advance",
    "Descriptor",
    "canonical_json",
    "check_digest",
    "json_object",
    "parse_json",
]

CHUNK = 1 << 20
LAYOUT_VERSION = "1.0.0"
MAX_JSON_BYTES = 4 << 20  # manifests, indexes and descriptors are small; refuse huge ones
MAX_METADATA_BYTES = 16 << 20  # a signed TUF metadata file: larger than any ngclient would accept
MAX_JSON_DEPTH = 64  # Sealift's own documents nest 6 deep, TUF metadata 7
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
METADATA_DIR = "tuf"  # signed TUF metadata travels beside the layout, outside its content-addressed part
# N.ROLE.json, no leading zeros; ROLE as ngclient names its file: any TUF role name, percent-encoded
# (urllib.parse.quote with no safe characters), so never a separator, and never a hidden file
METADATA_NAME = re.compile(r"(?:[1-9][0-9]{0,9}\.)?[A-Za-z0-9_~%-][A-Za-z0-9._~%-]{0,199}\.json")
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
    # what a bundle may hold, place by place (docs/bundle-format.md): anything else is refused
    IMAGE_MANIFESTS = frozenset({MANIFEST, DOCKER_MANIFEST})
    IMAGE_CONFIGS = frozenset({"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"})
    IMAGE_LAYERS = frozenset({
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    })
    PAYLOAD_FILES: ClassVar[Mapping[str, frozenset[str]]] = {
        "model": frozenset({MODEL, MODEL + TAR_SUFFIX, MODEL + ZSTD_SUFFIX, MODEL + TAR_SUFFIX + ZSTD_SUFFIX}),
        "config": frozenset({CONFIG, CONFIG + TAR_SUFFIX, CONFIG + ZSTD_SUFFIX, CONFIG + TAR_SUFFIX + ZSTD_SUFFIX}),
    }
    SIGSTORE = frozenset({SIGSTORE_BUNDLE, SIGSTORE_ROOT})


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


def parse_json(data: bytes | str, where: str, error: type[SealiftError] = Refused) -> Any:
    """``data`` parsed as strict JSON (RFC 8259's interoperable subset); ``error`` naming ``where`` otherwise.

    A key twice in one object is refused: Python keeps the last value and other readers the first,
    so one signed document could mean two releases. So are ``NaN`` and ``Infinity`` (not JSON), and
    nesting deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        parsed = json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as e:
        raise error(f"{where}: key {e.key[:80]!r} appears twice in one object") from e
    except ValueError as e:  # malformed JSON, bad UTF-8, integers too long to convert, a constant
        raise error(f"{where}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise error(f"{where}: JSON nested more than {MAX_JSON_DEPTH} deep") from e
    if _depth_exceeds(parsed, MAX_JSON_DEPTH):
        raise error(f"{where}: JSON nested more than {MAX_JSON_DEPTH} deep")
    return parsed


def json_object(data: bytes, where: str, error: type[SealiftError] = Refused) -> dict[str, Any]:
    """``data`` parsed as a strict JSON object (:func:`parse_json`); ``error`` naming ``where`` if it is not one."""
    parsed = parse_json(data, where, error)
    if not isinstance(parsed, dict):
        raise error(f"{where}: not a JSON object")
    return parsed


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # rare: find which key, for the message
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def check_digest(digest: str) -> str:
    """``digest`` if it is a well-formed sha256 digest; Refused otherwise."""
    if not _DIGEST.fullmatch(digest):
        raise Refused(f"unsupported or malformed digest {digest[:80]!r}")
    return digest
