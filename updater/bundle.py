"""The Sealift bundle, and the one check of it: what both ``sealift build`` (on what it just wrote),
``sealift verify`` and a device run before trusting a bundle.

A bundle is an OCI image layout whose top object is an image index with a Sealift artifactType.
The index lists each container image by its manifest digest and one payload manifest whose layers
are the models, the configs and the bundle descriptor (:mod:`updater.descriptor`).
Everything is content-addressed, so the index digest covers every byte. The check returns one
typed, immutable :class:`BundleInfo`, which staging, image loading and health checks consume.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from updater.artifact import Artifact, Kind, open_artifact
from updater.content import Hashed, copy_hashed, drain, read_json_blob, zstd_reader
from updater.descriptor import BundleDescriptor, FileEntry
from updater.errors import Refused
from updater.layout import LayoutReader
from updater.oci import ANNOTATION, MEDIA, Advance, Descriptor
from updater.provenance import check_provenance

__all__ = ["BundleInfo", "CheckReport", "Component", "check_bundle", "verify_bundle"]

_SIGSTORE_ROLES = {"provenance": MEDIA.SIGSTORE_BUNDLE, "sigstore-root": MEDIA.SIGSTORE_ROOT}
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
    """A bundle as its check found it: where it is, the one digest that covers it, its parts, and its
    typed descriptor (images, models and configs, application definition, health policy, profile)."""

    location: str
    digest: str  # of the top index: the one hash that covers the bundle
    components: tuple[Component, ...]
    descriptor: BundleDescriptor

    @property
    def name(self) -> str:
        return self.descriptor.name

    @property
    def version(self) -> str:
        return self.descriptor.version

    @property
    def profile(self) -> str:
        return self.descriptor.profile

    @property
    def compatible(self) -> str:
        return self.descriptor.compatible

    @property
    def created(self) -> str:
        return self.descriptor.created

    @property
    def platform(self) -> dict[str, str]:
        return self.descriptor.platform

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
    content: tuple[str, int] | None = None  # (digest, size) of a zstd layer's content


def verify_bundle(source: Path | Artifact, *, hashed: bool = False, progress: Advance | None = None) -> BundleInfo:
    """Check a bundle's structure and every blob; Refused naming the first problem (see :func:`check_bundle`)."""
    report = check_bundle(source, hashed=hashed, progress=progress)
    if report.problems:
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        where = source.path if isinstance(source, Artifact) else source
        raise Refused(f"{where}: {report.problems[0]}{more}")
    return report.bundle


def check_bundle(source: Path | Artifact, *, hashed: bool = False, progress: Advance | None = None) -> CheckReport:
    """Check a bundle (a path, or one already open) and collect every bad blob.

    Structural faults (no layout, a corrupt index or manifest, a descriptor that disagrees with the
    index) raise Refused at once; blob faults are collected, so all of them are reported. With
    ``hashed``, the blobs were hashed on their way into the device's store: their presence and sizes
    are checked, and compressed content is checked where it is staged.
    """
    with _opened(source) as artifact:
        reader = artifact.reader
        # (1) the top index, the manifests and the descriptor: small, read whole, digest-checked
        info, blobs, structural = _read_structure(reader, artifact.top)
        # (2) every other blob, streamed: digest, size, and the content digest of compressed layers
        problems, checked = _check_blobs(reader, blobs, progress, hashed=hashed)
        # (3) signatures the spec demanded (Sigstore), checked again from the bundle's own copies
        if not problems:
            problems += check_provenance(reader, info.descriptor.files)
        # (4) nothing else: the index digest must cover every byte there is
        referenced = structural | {b.descriptor.digest for b in blobs}
        problems += [f"blobs/sha256/{name.removeprefix('sha256:')[:64]} is not referenced by the bundle"
                     for name in sorted(reader.blob_names() - referenced)]
    return CheckReport(bundle=info, problems=tuple(problems), bytes_checked=checked)


@contextmanager
def _opened(source: Path | Artifact) -> Iterator[Artifact]:
    if isinstance(source, Artifact):
        artifact = source
        if artifact.kind is not Kind.BUNDLE:
            raise Refused(f"{artifact.path}: a Sealift {artifact.kind}, not a bundle")
        yield artifact
        return
    with open_artifact(source) as artifact, _opened(artifact) as bundle:
        yield bundle


def _read_structure(reader: LayoutReader, top: Descriptor) -> tuple[BundleInfo, list[_Blob], set[str]]:
    """The bundle's identity and parts, the blobs still to check, and the digests already checked."""
    index = read_json_blob(reader, top, "bundle index")
    annotations = index.get("annotations")
    if index.get("artifactType") != MEDIA.BUNDLE or not isinstance(annotations, dict):
        raise Refused(f"{reader.location}: bundle index {top.digest} lacks its artifactType or annotations")
    entries = [Descriptor.from_json(m, where="bundle index") for m in _list(index, "manifests", "bundle index")]
    payloads = [d for d in entries if d.artifact_type == MEDIA.PAYLOAD]
    if len(payloads) != 1:
        raise Refused(f"{reader.location}: bundle index must reference exactly one payload manifest")
    payload_blobs, descriptor, files = _read_payload(reader, payloads[0])
    image_blobs, image_parts = _read_images(reader, [d for d in entries if d is not payloads[0]], descriptor)
    _check_identity(reader.location, annotations, descriptor)
    info = BundleInfo(location=reader.location, digest=top.digest, descriptor=descriptor,
                      components=tuple(sorted([*image_parts, *files], key=lambda c: (c.kind, c.name))))
    return info, [*image_blobs, *payload_blobs], {top.digest, *(e.digest for e in entries)}


def _read_payload(reader: LayoutReader, payload: Descriptor) -> tuple[list[_Blob], BundleDescriptor, list[Component]]:
    manifest = read_json_blob(reader, payload, "payload manifest")
    layers = [Descriptor.from_json(d, where="payload manifest") for d in _list(manifest, "layers", "payload manifest")]
    config = Descriptor.from_json(manifest.get("config"), where="payload manifest config")
    if (payload.media_type, config.media_type) != (MEDIA.MANIFEST, MEDIA.EMPTY):
        raise Refused(f"{reader.location}: the payload is an OCI manifest with an empty config, not {payload.media_type[:80]!r} "
                      f"with {config.media_type[:80]!r}")
    descriptors = [d for d in layers if d.media_type == MEDIA.DESCRIPTOR]
    if len(descriptors) != 1:
        raise Refused(f"{reader.location}: payload manifest must hold exactly one bundle descriptor")
    descriptor = BundleDescriptor.parse(read_json_blob(reader, descriptors[0], "bundle descriptor", canonical=True), reader.location)
    blobs = [_Blob(label="payload config", descriptor=config), _Blob(label="bundle descriptor", descriptor=descriptors[0])]
    parts = [Component(kind="descriptor", name="descriptor", digest=descriptors[0].digest,
                       size=descriptors[0].size + payload.size, media_type=MEDIA.DESCRIPTOR)]
    listed = {(f.role, f.name): f for f in descriptor.files}
    provenance = {d for f in descriptor.files if f.provenance for d in (f.provenance.sigstore_bundle, f.provenance.trusted_root)}
    for layer in layers:
        if layer is descriptors[0]:
            continue
        role, name = layer.annotations.get("dev.sealift.component", "?"), layer.annotations.get(ANNOTATION.TITLE, "?")
        if role in _SIGSTORE_ROLES:
            if layer.media_type != _SIGSTORE_ROLES[role]:
                raise Refused(f"{reader.location}: Sigstore layer {layer.digest} has media type {layer.media_type[:80]!r}, "
                              f"expected {_SIGSTORE_ROLES[role]}")
            if layer.digest not in provenance:
                raise Refused(f"{reader.location}: Sigstore layer {layer.digest} is not named by any provenance record")
            provenance.discard(layer.digest)
            blobs.append(_Blob(label=f"Sigstore {'bundle of ' if role == 'provenance' else ''}{name}", descriptor=layer))
            continue
        entry = listed.pop((role, name), None)
        if entry is None:
            raise Refused(f"{reader.location}: payload layer {role} {name} ({layer.digest}) is not in the descriptor")
        content = _content_of(layer) or (layer.digest, layer.size)
        if _identity_of(entry) != (layer.media_type, layer.digest, layer.size, *content):
            raise Refused(f"{reader.location}: payload layer {role} {name} ({layer.digest}) disagrees with the descriptor")
        blobs.append(_Blob(label=f"{role} {name}", descriptor=layer, content=_content_of(layer)))
        parts.append(Component(kind=role, name=name, digest=layer.digest, size=layer.size,
                               media_type=layer.media_type, uncompressed_size=content[1], detail=entry.kind))
    if listed:
        role, name = next(iter(listed))
        raise Refused(f"{reader.location}: descriptor lists {role} {name}, which the payload manifest lacks")
    if provenance:
        raise Refused(f"{reader.location}: provenance names {sorted(provenance)[0]}, which the payload manifest lacks")
    return blobs, descriptor, parts


def _read_images(reader: LayoutReader, manifests: list[Descriptor], descriptor: BundleDescriptor) -> tuple[list[_Blob], list[Component]]:
    listed = {i.name: i for i in descriptor.images}
    blobs: list[_Blob] = []
    parts: list[Component] = []
    for entry in manifests:
        name = entry.annotations.get(ANNOTATION.IMAGE, "?")
        wanted = listed.pop(name, None)
        if entry.media_type not in MEDIA.IMAGE_MANIFESTS or wanted is None or wanted.manifest != entry.digest:
            raise Refused(f"{reader.location}: image manifest {entry.digest} ({name}) is not in the descriptor")
        manifest = read_json_blob(reader, entry, f"image {name} manifest")
        config = Descriptor.from_json(manifest.get("config"), where=f"image {name} manifest")
        if (wanted.media_type, wanted.size, wanted.config, wanted.platform) != (entry.media_type, entry.size, config.digest,
                                                                               entry.platform):
            raise Refused(f"{reader.location}: descriptor entry of image {name} disagrees with its manifest")
        layers = [Descriptor.from_json(d, where=f"image {name}") for d in _list(manifest, "layers", f"image {name}")]
        strange = [d.media_type for d in layers if d.media_type not in MEDIA.IMAGE_LAYERS]
        if config.media_type not in MEDIA.IMAGE_CONFIGS or strange:
            found = strange[0] if strange else config.media_type
            raise Refused(f"{reader.location}: image {name} holds a {found[:80]!r}, not an OCI or Docker image "
                          f"{'layer' if strange else 'config'}")
        blobs.append(_Blob(label=f"image {name} config", descriptor=config))
        blobs += [_Blob(label=f"image {name} layer {i + 1}/{len(layers)}", descriptor=d) for i, d in enumerate(layers)]
        size = entry.size + config.size + sum(d.size for d in layers)
        parts.append(Component(kind="image", name=name, digest=entry.digest, size=size, media_type=entry.media_type,
                               detail=f"{len(layers)} layers, image id {config.digest[7:19]}"))
    if listed:
        raise Refused(f"{reader.location}: descriptor lists image {next(iter(listed))}, which the index lacks")
    return blobs, parts


def _check_identity(location: str, annotations: dict[str, Any], descriptor: BundleDescriptor) -> None:
    """The index's annotations (what registries and media listings show) say what the descriptor says."""
    identity = {ANNOTATION.NAME: descriptor.name, ANNOTATION.VERSION: descriptor.version, ANNOTATION.PROFILE: descriptor.profile,
                ANNOTATION.COMPATIBLE: descriptor.compatible, ANNOTATION.CREATED: descriptor.created}
    for key, value in identity.items():
        if annotations.get(key) != value:
            raise Refused(f"{location}: index annotation {key} disagrees with the descriptor")


def _identity_of(entry: FileEntry) -> tuple[object, ...]:
    return entry.media_type, entry.digest, entry.size, entry.content_digest, entry.content_size


def _content_of(layer: Descriptor) -> tuple[str, int] | None:
    if not layer.media_type.endswith(MEDIA.ZSTD_SUFFIX):
        return None
    digest = layer.annotations.get(ANNOTATION.UNCOMPRESSED_DIGEST)
    size = layer.annotations.get(ANNOTATION.UNCOMPRESSED_SIZE, "")
    if digest is None or not _DIGITS.fullmatch(size):
        raise Refused(f"compressed layer {layer.digest} lacks its uncompressed digest and size")
    return digest, int(size)


def _check_blobs(reader: LayoutReader, blobs: list[_Blob], progress: Advance | None, *, hashed: bool) -> tuple[list[str], int]:
    """Check each distinct claim once, on as many threads as there are cores (hashing releases the GIL).

    A claim is a digest with a size and, for a compressed layer, its content digest and size: the
    same digest referenced twice with different claims is checked against each of them.
    """
    claims = list({_claim(b): b for b in reversed(blobs)}.values())[::-1]
    largest_first = sorted(claims, key=lambda b: -b.descriptor.size)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        found = pool.map(lambda b: _check_blob(reader, b, progress, hashed=hashed), largest_first)
        results = dict(zip(map(_claim, largest_first), found, strict=True))
    problems = [p for b in claims if (p := results[_claim(b)]) is not None]
    return problems, 0 if hashed else sum(b.descriptor.size for b in claims)


def _claim(blob: _Blob) -> tuple[str, int, tuple[str, int] | None]:
    return blob.descriptor.digest, blob.descriptor.size, blob.content


def _check_blob(reader: LayoutReader, blob: _Blob, progress: Advance | None, *, hashed: bool) -> str | None:
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
    if hashed:
        return None
    with reader.open_blob(d.digest) as stream:
        if blob.content is None:
            digest, size = copy_hashed(stream, None, limit=d.size, progress=progress)
            return None if (digest, size) == (d.digest, d.size) else f"{what} is corrupt: its bytes hash to {digest}"
        return _check_compressed(stream, d, blob.content, what, progress)


def _check_compressed(stream: Any, blob: Descriptor, content: tuple[str, int], what: str, progress: Advance | None) -> str | None:
    """Both digests in one pass: the stored bytes', and the content's as it decompresses. Every stored
    byte is hashed even when decompression fails, to tell a corrupt blob from bad content."""
    stored = Hashed(stream, digest=blob.digest, size=blob.size, what=what, advance=progress)
    plain = Hashed(None, digest=content[0], size=content[1], what=f"the content of {what}")
    problem = None
    try:
        with zstd_reader(stored, what) as decompressed:
            plain.source = decompressed
            drain(plain)
    except Refused as e:  # not zstd, too long once decompressed, or a stored blob that runs long
        problem = str(e).removeprefix(what).strip() or str(e)
    drain(_Remaining(stored))
    if not stored.matches():
        return f"{what} is corrupt: its bytes hash to {stored.actual}"
    if problem is None and not plain.matches():
        return f"{what} decompresses to {plain.done} bytes with digest {plain.actual}, expected {content[0]}"
    return f"{what} {problem}" if problem else None


class _Remaining:
    """What is left of a stream a decompression stopped reading (so all of it is hashed); stops at its size."""

    def __init__(self, stored: Hashed) -> None:
        self.stored = stored

    def read(self, n: int = -1, /) -> bytes:
        if self.stored.done > self.stored.size:
            return b""
        try:
            return self.stored.read(n)
        except Refused:
            return b""


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise Refused(f"{where}: {key} is not a list")
    return value
