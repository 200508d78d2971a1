"""The Sealift bundle: the payload descriptor, and the one reader that checks bundles.

A bundle is an OCI image layout whose top object is an image index with a Sealift artifactType.
The index lists each container image by its manifest digest and one payload manifest whose layers
are the models, the configs and the bundle descriptor (JSON). Everything is content-addressed, so
the index digest covers every byte. :func:`check_bundle` is what both ``sealift build`` (on what
it just wrote) and the device run before trusting a bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from updater.appdef import App, HealthPolicy, parse_app, parse_health
from updater.errors import InputError, Refused
from updater.layout import LayoutReader, open_layout
from updater.oci import ANNOTATION, CHUNK, LAYOUT_VERSION, MAX_JSON_BYTES, MEDIA, Advance, Descriptor, copy_hashed
from updater.provenance import check_provenance
from updater.yamlfile import Field

__all__ = [
    "MAX_ZSTD_WINDOW",
    "BundleInfo",
    "CheckReport",
    "Component",
    "check_bundle",
    "release_definition",
    "verify_bundle",
]


_MANIFEST_TYPES = (MEDIA.MANIFEST, MEDIA.DOCKER_MANIFEST)
_SIGSTORE_ROLES = ("provenance", "sigstore-root")
_PROVENANCE_KEYS = ("identity", "issuer", "sigstoreBundle", "trustedRoot")
MAX_ZSTD_WINDOW = 8 << 20
_DIGITS = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, kw_only=True)
class Component:
    """One part of a bundle as ``inspect`` shows it."""

    kind: str  # image, model, config, descriptor
    name: str
    digest: str
    size: int  # bytes stored in the bundle
    media_type: str
    uncompressed_size: int | None = None
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class BundleInfo:
    """What a bundle is: its identity and its parts."""

    location: str
    digest: str  # of the top index: the one hash that covers the bundle
    name: str
    version: str
    profile: str
    compatible: str
    created: str
    platform: dict[str, str]
    components: tuple[Component, ...]
    descriptor: dict[str, Any] = field(repr=False)

    @property
    def size(self) -> int:
        return sum(c.size for c in self.components)

    def to_json(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "digest": self.digest,
            "name": self.name,
            "version": self.version,
            "profile": self.profile,
            "compatible": self.compatible,
            "created": self.created,
            "platform": self.platform,
            "size": self.size,
            "components": [
                {k: v for k, v in vars(c).items() if v not in (None, "")} for c in self.components
            ],
        }


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """The result of checking a bundle: what it is, and every problem found."""

    bundle: BundleInfo
    problems: tuple[str, ...]
    bytes_checked: int

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, kw_only=True)
class _Blob:
    label: str
    descriptor: Descriptor
    uncompressed: tuple[str, int] | None = None  # (digest, size) of a zstd layer's content


def verify_bundle(path: Path, *, progress: Advance | None = None) -> BundleInfo:
    """Check a bundle's structure and every blob; raise Refused naming the first problem."""
    report = check_bundle(path, progress=progress)
    if report.problems:
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        raise Refused(f"{path}: {report.problems[0]}{more}")
    return report.bundle


def check_bundle(path: Path, *, progress: Advance | None = None) -> CheckReport:
    """Check a bundle and collect every bad blob.

    Structural faults (no layout, a corrupt index or manifest, a descriptor that disagrees with
    the index) raise Refused at once; blob faults are collected, so all of them are reported.
    """
    with open_layout(path) as reader:
        # (1) the layout marker and its single entry point
        top = _entry_point(reader)
        # (2) the top index, the manifests and the descriptor: small, read whole, digest-checked
        info, blobs, structural = _read_structure(reader, top)
        # (3) every other blob, streamed: digest, size, and the content digest of compressed layers
        problems, checked = _check_blobs(reader, blobs, progress)
        # (4) signatures the spec demanded (Sigstore), checked again from the bundle's own copies
        if not problems:
            problems += check_provenance(reader, list(_file_entries(info.descriptor)))
        # (5) nothing else: the index digest must cover every byte there is
        referenced = structural | {b.descriptor.digest for b in blobs}
        problems += [f"blobs/sha256/{name.removeprefix('sha256:')[:64]} is not referenced by the bundle"
                     for name in sorted(reader.blob_names() - referenced)]
    return CheckReport(bundle=info, problems=tuple(problems), bytes_checked=checked)


def _entry_point(reader: LayoutReader) -> Descriptor:
    marker = _parse_json(reader.read_small("oci-layout"), f"{reader.location}: oci-layout")
    if not isinstance(marker, dict) or marker.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise Refused(f"{reader.location}: oci-layout does not declare imageLayoutVersion {LAYOUT_VERSION}")
    index = _parse_json(reader.read_small("index.json"), f"{reader.location}: index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1:
        raise Refused(f"{reader.location}: index.json must list exactly one bundle index")
    top = Descriptor.from_json(manifests[0], where=f"{reader.location}: index.json")
    if top.media_type != MEDIA.INDEX or top.artifact_type != MEDIA.BUNDLE:
        raise Refused(f"{reader.location}: index.json does not point at a Sealift bundle ({MEDIA.BUNDLE})")
    return top


def _read_structure(reader: LayoutReader, top: Descriptor) -> tuple[BundleInfo, list[_Blob], set[str]]:
    """The bundle's identity and parts, the blobs still to check, and the digests already checked."""
    index = _read_json_blob(reader, top, "bundle index")
    annotations = index.get("annotations")
    if index.get("artifactType") != MEDIA.BUNDLE or not isinstance(annotations, dict):
        raise Refused(f"{reader.location}: bundle index {top.digest} lacks its artifactType or annotations")
    entries = [Descriptor.from_json(m, where="bundle index") for m in _list(index, "manifests", "bundle index")]
    payloads = [d for d in entries if d.artifact_type == MEDIA.PAYLOAD]
    if len(payloads) != 1:
        raise Refused(f"{reader.location}: bundle index must reference exactly one payload manifest")
    payload_blobs, descriptor, files = _read_payload(reader, payloads[0])
    image_blobs, image_parts = _read_images(reader, [d for d in entries if d is not payloads[0]], descriptor)
    info = _bundle_info(reader.location, top, annotations, descriptor, [*image_parts, *files])
    release_definition(reader.location, descriptor)
    return info, [*image_blobs, *payload_blobs], {top.digest, *(e.digest for e in entries)}


def _read_payload(reader: LayoutReader, payload: Descriptor) -> tuple[list[_Blob], dict[str, Any], list[Component]]:
    manifest = _read_json_blob(reader, payload, "payload manifest")
    layers = [Descriptor.from_json(d, where="payload manifest") for d in _list(manifest, "layers", "payload manifest")]
    config = Descriptor.from_json(manifest.get("config"), where="payload manifest config")
    descriptors = [d for d in layers if d.media_type == MEDIA.DESCRIPTOR]
    if len(descriptors) != 1:
        raise Refused(f"{reader.location}: payload manifest must hold exactly one bundle descriptor")
    descriptor = _read_json_blob(reader, descriptors[0], "bundle descriptor")
    blobs = [_Blob(label="payload config", descriptor=config), _Blob(label="bundle descriptor", descriptor=descriptors[0])]
    parts = [Component(kind="descriptor", name="descriptor", digest=descriptors[0].digest,
                       size=descriptors[0].size + payload.size, media_type=MEDIA.DESCRIPTOR)]
    entries = list(_file_entries(descriptor))
    listed = {(e["role"], e["name"]): e for e in entries}
    if len(listed) != len(entries):
        raise Refused(f"{reader.location}: descriptor lists a model or config name twice")
    provenance = {d for e in entries for d in (e.get("provenance") or {}).values() if str(d).startswith("sha256:")}
    for layer in layers:
        if layer is descriptors[0]:
            continue
        role, name = layer.annotations.get("dev.sealift.component", "?"), layer.annotations.get(ANNOTATION.TITLE, "?")
        if role in _SIGSTORE_ROLES:
            if layer.digest not in provenance:
                raise Refused(f"{reader.location}: Sigstore layer {layer.digest} is not named by any provenance record")
            provenance.discard(layer.digest)
            blobs.append(_Blob(label=f"Sigstore {'bundle of ' if role == 'provenance' else ''}{name}", descriptor=layer))
            continue
        entry = listed.pop((role, name), None)
        content = _uncompressed(layer) or (layer.digest, layer.size)
        if entry is None:
            raise Refused(f"{reader.location}: payload layer {role} {name} ({layer.digest}) is not in the descriptor")
        if _entry_identity(entry) != (layer.media_type, layer.digest, layer.size, *content):
            raise Refused(f"{reader.location}: payload layer {role} {name} ({layer.digest}) disagrees with the descriptor")
        blobs.append(_Blob(label=f"{role} {name}", descriptor=layer, uncompressed=_uncompressed(layer)))
        parts.append(Component(kind=role, name=name, digest=layer.digest, size=layer.size,
                               media_type=layer.media_type, uncompressed_size=content[1], detail=str(entry["kind"])))
    if listed:
        role, name = next(iter(listed))
        raise Refused(f"{reader.location}: descriptor lists {role} {name}, which the payload manifest lacks")
    if provenance:
        raise Refused(f"{reader.location}: provenance names {sorted(provenance)[0]}, which the payload manifest lacks")
    return blobs, descriptor, parts


def _read_images(
    reader: LayoutReader, manifests: list[Descriptor], descriptor: dict[str, Any]
) -> tuple[list[_Blob], list[Component]]:
    images = _list(descriptor, "images", "descriptor")
    if not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in images):
        raise Refused(f"{reader.location}: descriptor: malformed image entry")
    listed = {e["name"]: e for e in images}
    if len(listed) != len(images):
        raise Refused(f"{reader.location}: descriptor lists an image name twice")
    blobs: list[_Blob] = []
    parts: list[Component] = []
    for entry in manifests:
        name = entry.annotations.get(ANNOTATION.IMAGE, "?")
        wanted = listed.pop(name, None)
        if entry.media_type not in _MANIFEST_TYPES or wanted is None or wanted.get("manifest") != entry.digest:
            raise Refused(f"{reader.location}: image manifest {entry.digest} ({name}) is not in the descriptor")
        manifest = _read_json_blob(reader, entry, f"image {name} manifest")
        config = Descriptor.from_json(manifest.get("config"), where=f"image {name} manifest")
        claimed = {k: wanted.get(k) for k in ("mediaType", "size", "config", "platform")}
        if claimed != {"mediaType": entry.media_type, "size": entry.size, "config": config.digest, "platform": entry.platform}:
            raise Refused(f"{reader.location}: descriptor entry of image {name} disagrees with its manifest")
        layers = [Descriptor.from_json(d, where=f"image {name}") for d in _list(manifest, "layers", f"image {name}")]
        blobs.append(_Blob(label=f"image {name} config", descriptor=config))
        blobs += [_Blob(label=f"image {name} layer {i + 1}/{len(layers)}", descriptor=d) for i, d in enumerate(layers)]
        size = entry.size + config.size + sum(d.size for d in layers)
        parts.append(Component(kind="image", name=name, digest=entry.digest, size=size, media_type=entry.media_type,
                               detail=f"{len(layers)} layers, image id {config.digest[7:19]}"))
    if listed:
        raise Refused(f"{reader.location}: descriptor lists image {next(iter(listed))}, which the index lacks")
    return blobs, parts


def _bundle_info(
    location: str, top: Descriptor, annotations: dict[str, Any], descriptor: dict[str, Any], parts: list[Component]
) -> BundleInfo:
    profile = descriptor.get("profile")
    if not isinstance(profile, dict):
        raise Refused(f"{location}: descriptor has no profile")
    platform = profile.get("platform")
    if not isinstance(platform, dict) or not all(isinstance(v, str) for v in platform.values()):
        raise Refused(f"{location}: descriptor has no valid profile and platform")
    identity = {
        ANNOTATION.NAME: descriptor.get("name"),
        ANNOTATION.VERSION: descriptor.get("version"),
        ANNOTATION.PROFILE: profile.get("name"),
        ANNOTATION.COMPATIBLE: profile.get("compatible"),
        ANNOTATION.CREATED: descriptor.get("created"),
    }
    for key, value in identity.items():
        if not isinstance(value, str) or annotations.get(key) != value:
            raise Refused(f"{location}: index annotation {key} disagrees with the descriptor")
    return BundleInfo(
        location=location,
        digest=top.digest,
        name=str(identity[ANNOTATION.NAME]),
        version=str(identity[ANNOTATION.VERSION]),
        profile=str(identity[ANNOTATION.PROFILE]),
        compatible=str(identity[ANNOTATION.COMPATIBLE]),
        created=str(identity[ANNOTATION.CREATED]),
        platform=platform,
        components=tuple(sorted(parts, key=lambda c: (c.kind, c.name))),
        descriptor=descriptor,
    )


_FILE_ENTRY_TYPES = {
    "name": str, "kind": str, "mediaType": str, "digest": str, "size": int, "uncompressedDigest": str, "uncompressedSize": int,
}


def release_definition(location: str, descriptor: dict[str, Any]) -> tuple[App, HealthPolicy]:
    """The descriptor's app definition and health policy, validated by the code that validates a spec."""
    secrets = _list(descriptor, "secrets", "descriptor")
    if not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in secrets):
        raise Refused(f"{location}: descriptor: malformed secret entry")
    configs = tuple(e["name"] for e in _list(descriptor, "configs", "descriptor"))
    mountable = (*(e["name"] for e in _list(descriptor, "models", "descriptor")), *configs)
    try:
        app = parse_app(Field(Path(location), "descriptor.app", descriptor.get("app")),
                        images=tuple(e["name"] for e in _list(descriptor, "images", "descriptor")),
                        mountable=mountable, secrets=tuple(s["name"] for s in secrets))
        health = parse_health(Field(Path(location), "descriptor.health", descriptor.get("health")), app=app, configs=configs)
    except InputError as e:
        raise Refused(str(e)) from e
    return app, health


def _file_entries(descriptor: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for role, key in (("model", "models"), ("config", "configs")):
        for entry in _list(descriptor, key, "descriptor"):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), t) for k, t in _FILE_ENTRY_TYPES.items()):
                raise Refused(f"descriptor: malformed {role} entry (expected {', '.join(_FILE_ENTRY_TYPES)})")
            if entry["kind"] not in ("file", "directory"):
                raise Refused(f"descriptor: {role} {entry['name']} has unknown kind {str(entry['kind'])[:40]!r}")
            provenance = entry.get("provenance")
            if provenance is not None and (not isinstance(provenance, dict) or sorted(provenance) != sorted(_PROVENANCE_KEYS)
                                           or not all(isinstance(v, str) for v in provenance.values())):
                raise Refused(f"descriptor: {role} {entry['name']} has a malformed provenance record")
            yield {**entry, "role": role}


def _entry_identity(entry: dict[str, Any]) -> tuple[object, ...]:
    return tuple(entry[k] for k in ("mediaType", "digest", "size", "uncompressedDigest", "uncompressedSize"))


def _uncompressed(layer: Descriptor) -> tuple[str, int] | None:
    if not layer.media_type.endswith(MEDIA.ZSTD_SUFFIX):
        return None
    digest = layer.annotations.get(ANNOTATION.UNCOMPRESSED_DIGEST)
    size = layer.annotations.get(ANNOTATION.UNCOMPRESSED_SIZE, "")
    if digest is None or not _DIGITS.fullmatch(size):
        raise Refused(f"compressed layer {layer.digest} lacks its uncompressed digest and size")
    return digest, int(size)


def _check_blobs(reader: LayoutReader, blobs: list[_Blob], progress: Advance | None) -> tuple[list[str], int]:
    """Check each distinct claim once, on as many threads as there are cores (hashing releases the GIL).

    A claim is a digest with a size and, for a compressed layer, its content digest and size: the
    same digest referenced twice with different claims is checked against each of them.
    """
    claims = list({_claim(b): b for b in reversed(blobs)}.values())[::-1]
    largest_first = sorted(claims, key=lambda b: -b.descriptor.size)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = dict(zip(map(_claim, largest_first), pool.map(lambda b: _check_blob(reader, b, progress), largest_first),
                           strict=True))
    problems = [p for b in claims if (p := results[_claim(b)]) is not None]
    return problems, sum(b.descriptor.size for b in claims)


def _claim(blob: _Blob) -> tuple[str, int, tuple[str, int] | None]:
    return blob.descriptor.digest, blob.descriptor.size, blob.uncompressed


def _check_blob(reader: LayoutReader, blob: _Blob, progress: Advance | None) -> str | None:
    d = blob.descriptor
    what = f"{blob.label} ({d.digest[:19]}…)"
    stored = reader.blob_size(d.digest)
    if stored is None:
        return f"{what} is missing"
    if stored < 0:
        return f"{what} is not a regular file"
    if stored != d.size:
        kind = "truncated" if stored < d.size else "too long"
        return f"{what} is {kind}: {stored} bytes, expected {d.size}"
    with reader.open_blob(d.digest) as stream:
        if blob.uncompressed is None:
            digest, size = copy_hashed(stream, None, limit=d.size, progress=progress)
            content_problem = None
        else:
            digest, size, content_problem = _check_zstd(stream, d.size, blob.uncompressed, progress)
    if (digest, size) != (d.digest, d.size):
        return f"{what} is corrupt: its bytes hash to {digest}"
    return f"{what} {content_problem}" if content_problem else None


class _Decompressing:
    """A write sink that decompresses into a hash, refusing more output than declared.

    A fault stops the decompression but not the writes, so the caller still hashes every
    stored byte and can say whether the blob itself or only its content is wrong.
    """

    def __init__(self, expected_size: int) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.limit = expected_size
        self.problem: str | None = None
        # Sealift writes level-3 frames (windows of at most 2 MiB); a larger window is refused,
        # so a hostile frame cannot make each of the parallel checks allocate hundreds of MiB.
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        self.writer = decompressor.stream_writer(_Sink(self), write_size=CHUNK)  # type: ignore[arg-type]

    def write(self, data: bytes | memoryview, /) -> int:
        if self.problem is None:
            try:
                self.writer.write(data)
            except _TooLong:
                self.problem = f"decompresses to more than the declared {self.limit} bytes"
            except zstandard.ZstdError as e:
                self.problem = f"is not valid zstd data ({e})"
        return len(data)

    def finish(self) -> str | None:
        if self.problem is None:
            try:
                self.writer.flush()  # type: ignore[no-untyped-call]
            except zstandard.ZstdError as e:
                self.problem = f"is not valid zstd data ({e})"
        return self.problem

    def content(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _TooLong
        self.sha.update(data)


class _Sink:
    def __init__(self, owner: _Decompressing) -> None:
        self.owner = owner

    def write(self, data: bytes | memoryview, /) -> int:
        self.owner.content(data)
        return len(data)


class _TooLong(Exception):
    pass


def _check_zstd(
    stream: Any, size: int, uncompressed: tuple[str, int], progress: Advance | None
) -> tuple[str, int, str | None]:
    """The stored digest and length, and what is wrong with the content, if anything."""
    sink = _Decompressing(uncompressed[1])
    digest, read = copy_hashed(stream, sink, limit=size, progress=progress)
    if problem := sink.finish():
        return digest, read, problem
    content = (f"sha256:{sink.sha.hexdigest()}", sink.size)
    if content != uncompressed:
        return digest, read, f"decompresses to {content[1]} bytes with digest {content[0]}, expected {uncompressed[0]}"
    return digest, read, None


def _read_json_blob(reader: LayoutReader, d: Descriptor, what: str) -> dict[str, Any]:
    if d.size > MAX_JSON_BYTES:
        raise Refused(f"{reader.location}: {what} {d.digest} is {d.size} bytes, more than {MAX_JSON_BYTES}")
    with reader.open_blob(d.digest) as stream:
        data = stream.read(d.size + 1)
    if len(data) != d.size or f"sha256:{hashlib.sha256(data).hexdigest()}" != d.digest:
        raise Refused(f"{reader.location}: {what} ({d.digest[:19]}…) is corrupt or truncated")
    parsed = _parse_json(data, f"{reader.location}: {what}")
    if not isinstance(parsed, dict):
        raise Refused(f"{reader.location}: {what} is not a JSON object")
    return parsed


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:  # malformed JSON, bad UTF-8, integers too long to convert
        raise Refused(f"{where}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise Refused(f"{where}: JSON nested too deeply") from e


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise Refused(f"{where}: {key} is not a list")
    return value
