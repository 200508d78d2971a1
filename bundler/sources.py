"""Where container images come from: OCI layouts, archives, the local Docker engine, registries.

Every source resolves a reference to one image manifest for the profile's platform (choosing it
from a multi-arch index when there is one) and then streams that image's blobs. Manifests and
blobs are copied byte for byte, so the image keeps its digest and its ID in the bundle.

References use the transports skopeo users know:
``oci:DIR[:REF]``, ``oci-archive:TAR[:REF]``, ``docker-archive:TAR[:NAME:TAG]``,
``docker-daemon:NAME:TAG`` and ``docker://HOST/REPO[:TAG|@DIGEST]``.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import tarfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeGuard

from bundler.spec import SourceRoots
from updater.errors import InputError, Refused
from updater.layout import open_layout, read_index
from updater.oci import MAX_JSON_BYTES, MEDIA, Descriptor, canonical_json, json_object, parse_json
from updater.profiles import Platform

__all__ = [
    "ImageSource",
    "ResolvedImage",
    "check_config_platform",
    "open_image_source",
    "parse_manifest",
    "select_platform",
    "verified",
]

_INDEX_TYPES = (MEDIA.INDEX, MEDIA.DOCKER_LIST)
_MANIFEST_TYPES = (MEDIA.MANIFEST, MEDIA.DOCKER_MANIFEST)
_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class ResolvedImage:
    """One image manifest, chosen for a platform, and the blobs it references."""

    reference: str
    manifest: bytes
    descriptor: Descriptor  # of the manifest: its media type, digest and size
    config: Descriptor
    layers: tuple[Descriptor, ...]


class ImageSource(Protocol):
    """A place images are read from."""

    def resolve(self, platform: Platform) -> ResolvedImage: ...

    def open_blob(self, blob: Descriptor) -> AbstractContextManager[IO[bytes]]: ...

    def locate_blob(self, blob: Descriptor) -> tuple[Path, int] | None:
        """The local file and offset holding the blob's bytes, for a kernel copy; None to stream."""
        ...

    def close(self) -> None: ...


@contextmanager
def open_image_source(reference: str, *, roots: SourceRoots, work: Path, plain_http: bool = False) -> Iterator[ImageSource]:
    """Open the source that ``reference`` names; a local path is taken from the spec's directory and held inside ``roots``."""
    base = roots.spec_dir
    transport, sep, rest = reference.partition(":")
    if not sep or not rest:
        raise InputError(f"image {reference!r}: expected TRANSPORT:REFERENCE, e.g. oci:DIR:TAG or docker://HOST/REPO:TAG")
    source: ImageSource
    if transport == "oci":
        path, ref = _path_and_ref(rest, base)
        source = _LayoutSource(reference, roots.resolve(path, what=f"image {reference}"), ref)
    elif transport in ("oci-archive", "docker-archive"):
        path, ref = _path_and_ref(rest, base)
        source = _archive_source(reference, roots.resolve(path, what=f"image {reference}"), ref)
    elif transport == "docker-daemon":
        source = _daemon_source(reference, rest, work)
    elif transport == "docker" and rest.startswith("//"):
        from bundler.registry_source import RegistrySource

        source = RegistrySource(reference, plain_http=plain_http)
    else:
        raise InputError(
            f"image {reference!r}: unknown transport {transport!r} "
            "(expected oci, oci-archive, docker-archive, docker-daemon or docker://)"
        )
    try:
        yield source
    finally:
        source.close()


def _path_and_ref(rest: str, base: Path) -> tuple[str, str | None]:
    """Split ``PATH[:REF]``; REF may hold colons (``NAME:TAG``), so the first existing prefix is the path."""
    if (base / rest).exists():
        return rest, None
    for i, char in enumerate(rest):
        if char == ":" and i and (base / rest[:i]).exists():
            return rest[:i], rest[i + 1 :] or None
    path, sep, ref = rest.rpartition(":")
    if sep and path and "/" not in ref:
        return path, ref
    return rest, None


def select_platform(reference: str, index: dict[str, Any], platform: Platform) -> Descriptor:
    """The manifest for ``platform`` in a multi-arch index; InputError naming what it has otherwise."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise InputError(f"image {reference}: the image index has no manifests list")
    try:
        entries = [Descriptor.from_json(m, where=f"image {reference} index") for m in manifests]
    except Refused as e:
        raise InputError(str(e)) from e
    offered = []
    for entry in entries:
        p = entry.platform or {}
        candidate = Platform(os=p.get("os", ""), architecture=p.get("architecture", ""), variant=p.get("variant"))
        if entry.media_type in _MANIFEST_TYPES and candidate.architecture != "unknown":
            offered.append(str(candidate))
            if candidate.matches(platform):
                return entry
    have = ", ".join(offered) or "none"
    raise InputError(f"image {reference}: no manifest for platform {platform} (the index has: {have})")


def check_config_platform(reference: str, config: bytes, platform: Platform) -> None:
    """Refuse a single-platform image whose config names another platform."""
    data = json_object(config, f"image {reference} config", InputError)
    found = Platform(os=str(data.get("os", "")), architecture=str(data.get("architecture", "")),
                     variant=data.get("variant") if isinstance(data.get("variant"), str) else None)
    if not found.matches(platform):
        raise InputError(f"image {reference}: is built for {found}, the profile needs {platform}")


def parse_manifest(reference: str, body: bytes, descriptor: Descriptor) -> ResolvedImage:
    data = json_object(body, f"image {reference} manifest", InputError)
    try:
        config = Descriptor.from_json(data.get("config"), where=f"image {reference} manifest")
        layers = tuple(Descriptor.from_json(d, where=f"image {reference} manifest") for d in data.get("layers", []))
    except Refused as e:
        raise InputError(str(e)) from e
    return ResolvedImage(reference=reference, manifest=body, descriptor=descriptor, config=config, layers=layers)


def verified(reference: str, body: bytes, descriptor: Descriptor) -> bytes:
    """``body`` if it matches ``descriptor``; InputError otherwise."""
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    if (digest, len(body)) != (descriptor.digest, descriptor.size):
        raise InputError(f"image {reference}: {descriptor.digest} does not match its content (got {digest})")
    return body


def _strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class _LayoutSource:
    """An OCI image layout, as a directory or a tar file (also Docker 25+ ``docker save`` output)."""

    def __init__(self, reference: str, path: Path, ref: str | None) -> None:
        self.reference, self.ref = reference, ref
        if not path.exists():
            raise InputError(f"image {reference}: {path} not found")
        self._context = open_layout(path, strict=False)
        try:
            self.reader = self._context.__enter__()
        except Refused as e:  # a damaged layout the spec names: the spec's input is wrong
            raise InputError(f"image {reference}: {e}") from e

    def resolve(self, platform: Platform) -> ResolvedImage:
        entry = self._entry()
        if entry.media_type in _INDEX_TYPES:
            entry = select_platform(self.reference, json_object(self._small(entry), f"image {self.reference} index", InputError), platform)
        if entry.media_type not in _MANIFEST_TYPES:
            raise InputError(f"image {self.reference}: {entry.digest} is a {entry.media_type}, not an image manifest")
        image = parse_manifest(self.reference, self._small(entry), entry)
        check_config_platform(self.reference, self._small(image.config), platform)
        return image

    def _entry(self) -> Descriptor:
        entries = read_index(self.reader, error=InputError)
        names = [e.annotations.get("org.opencontainers.image.ref.name") for e in entries]
        if self.ref is None and len(entries) == 1:
            return entries[0]
        for entry, name in zip(entries, names, strict=True):
            if name is not None and self.ref in (name, name.rpartition(":")[2]):
                return entry
        have = ", ".join(n for n in names if n) or "no named images"
        raise InputError(f"image {self.reference}: reference {self.ref or '(none)'} not found (the layout has: {have})")

    def _small(self, d: Descriptor) -> bytes:
        if d.size > MAX_JSON_BYTES:
            raise InputError(f"image {self.reference}: {d.digest} is too large for a manifest or config")
        with self.open_blob(d) as stream:
            return verified(self.reference, stream.read(d.size + 1), d)

    @contextmanager
    def open_blob(self, blob: Descriptor) -> Iterator[IO[bytes]]:
        try:
            stream = self.reader.open_blob(blob.digest)
        except Refused as e:
            raise InputError(f"image {self.reference}: {e}") from e
        with stream:
            yield stream

    def locate_blob(self, blob: Descriptor) -> tuple[Path, int] | None:
        return self.reader.locate(blob.digest)

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def _archive_source(reference: str, path: Path, ref: str | None) -> ImageSource:
    if not path.is_file():
        raise InputError(f"image {reference}: {path} not found")
    try:
        with tarfile.open(path, "r:") as tar:
            names = set(tar.getnames())
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"image {reference}: {path} is not a readable tar file ({e})") from e
    if "index.json" in names or "./index.json" in names:
        return _LayoutSource(reference, path, ref)
    return _DockerArchiveSource(reference, path, ref)


class _DockerArchiveSource:
    """``docker save`` output in the classic format: ``manifest.json`` and uncompressed layer tars.

    The image has no registry manifest, so one is written here: OCI media types, the config
    bytes as saved (so the image ID survives), and each layer stored as the uncompressed tar
    whose digest the config already records as its diff_id.
    """

    def __init__(self, reference: str, path: Path, ref: str | None) -> None:
        self.reference, self.ref, self.path = reference, ref, path
        self.tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by close())
        self.paths: dict[str, str] = {}

    def resolve(self, platform: Platform) -> ResolvedImage:
        entry = self._entry()
        config_path, layer_paths = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_path, str) or not _strings(layer_paths):
            raise InputError(f"image {self.reference}: manifest.json entry lacks Config or Layers")
        config_bytes = self._read_member(config_path, MAX_JSON_BYTES)
        check_config_platform(self.reference, config_bytes, platform)
        rootfs = json_object(config_bytes, f"image {self.reference} config", InputError).get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not _strings(diff_ids) or not all(_DIGEST.fullmatch(d) for d in diff_ids):
            raise InputError(f"image {self.reference}: config has no valid rootfs.diff_ids")
        if len(diff_ids) != len(layer_paths):
            raise InputError(f"image {self.reference}: config lists {len(diff_ids)} layers, the archive {len(layer_paths)}")
        config_digest = f"sha256:{hashlib.sha256(config_bytes).hexdigest()}"
        config_d = Descriptor(media_type=_OCI_CONFIG, digest=config_digest, size=len(config_bytes))
        self.paths[config_digest] = config_path
        layers = []
        for diff_id, layer_path in zip(diff_ids, layer_paths, strict=True):
            self.paths[diff_id] = layer_path
            layers.append(Descriptor(media_type=_OCI_LAYER_TAR, digest=diff_id, size=self._member(layer_path).size))
        manifest = canonical_json({
            "schemaVersion": 2,
            "mediaType": MEDIA.MANIFEST,
            "config": config_d.to_json(),
            "layers": [d.to_json() for d in layers],
        })
        digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
        return ResolvedImage(
            reference=self.reference,
            manifest=manifest,
            descriptor=Descriptor(media_type=MEDIA.MANIFEST, digest=digest, size=len(manifest)),
            config=config_d,
            layers=tuple(layers),
        )

    def _entry(self) -> dict[str, Any]:
        data = parse_json(self._read_member("manifest.json", MAX_JSON_BYTES), f"image {self.reference}: manifest.json", InputError)
        if not isinstance(data, list) or not data or not all(isinstance(e, dict) for e in data):
            raise InputError(f"image {self.reference}: manifest.json lists no images")
        if self.ref is None and len(data) == 1:
            return dict(data[0])
        tagged = [(entry, tag) for entry in data for tag in (entry.get("RepoTags") or []) if isinstance(tag, str)]
        for entry, tag in tagged:
            if self.ref in (tag, tag.rpartition(":")[2]):
                return dict(entry)
        have = ", ".join(tag for _, tag in tagged) or "no tagged images"
        raise InputError(f"image {self.reference}: reference {self.ref or '(none)'} not found (the archive has: {have})")

    def _member(self, name: str, depth: int = 0) -> tarfile.TarInfo:
        try:
            info = self.tar.getmember(name)
        except KeyError:
            raise InputError(f"image {self.reference}: {name} is missing from the archive") from None
        if info.issym() and depth < 8:
            return self._member(posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname)), depth + 1)
        if not info.isreg():
            raise InputError(f"image {self.reference}: {name} is not a regular file in the archive")
        return info

    def _read_member(self, name: str, limit: int) -> bytes:
        with self._open(name) as stream:
            data = stream.read(limit + 1)
        if len(data) > limit:
            raise InputError(f"image {self.reference}: {name} is larger than {limit} bytes")
        return data

    @contextmanager
    def _open(self, name: str) -> Iterator[IO[bytes]]:
        stream = self.tar.extractfile(self._member(name))
        assert stream is not None
        with stream:
            yield stream

    @contextmanager
    def open_blob(self, blob: Descriptor) -> Iterator[IO[bytes]]:
        with self._open(self.paths[blob.digest]) as stream:
            yield stream

    def locate_blob(self, blob: Descriptor) -> tuple[Path, int] | None:
        info = self._member(self.paths[blob.digest])
        return None if info.issparse() else (self.path, info.offset_data)

    def close(self) -> None:
        self.tar.close()


def _daemon_source(reference: str, name: str, work: Path) -> ImageSource:
    """Save the image from the local Docker engine into ``work``, then read it as an archive."""
    import docker
    import docker.errors
    import requests

    target = work / f"docker-save-{hashlib.sha256(name.encode()).hexdigest()[:16]}.tar"
    try:
        client = docker.from_env()
    except docker.errors.DockerException as e:
        raise InputError(f"image {reference}: cannot reach the Docker engine ({e})") from e
    try:
        image = client.images.get(name)
        with open(target, "wb") as out:
            for chunk in image.save(chunk_size=1 << 20, named=True):
                out.write(chunk)
    except docker.errors.ImageNotFound as e:
        raise InputError(f"image {reference}: not found in the local Docker engine") from e
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise InputError(f"image {reference}: the Docker engine failed to export it ({e})") from e
    finally:
        client.close()
    tag = name if ":" in name.rpartition("/")[2] else f"{name}:latest"
    return _archive_source(reference, target, tag)
