"""Moving bundles between places that hold OCI content: layouts on disk and registry repositories.

A bundle is a graph: its top index names manifests, manifests name a config and layers. ``walk``
reads the graph's small JSON nodes (each checked against its digest) and lists every blob once;
``copy`` sends only the blobs the destination lacks, then the manifests children first and the
top index last, so a reader of the destination never sees an index whose parts are missing.
Blobs are streamed and their digests checked on the way; nothing that fails its digest is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from updater.content import Hashed, checked_json
from updater.durable import fsync_dir, replace_file
from updater.errors import ContentMismatch, DeliveryError, DeviceFault, Refused
from updater.layout import LayoutReader
from updater.oci import CHUNK, LAYOUT_VERSION, MAX_JSON_BYTES, MEDIA, METADATA_NAME, Advance, Descriptor, canonical_json, json_object
from updater.upload import upload_blob

if TYPE_CHECKING:
    from updater.registry import RegistryClient

__all__ = [
    "EMPTY_CONFIG",
    "DirectoryEndpoint",
    "Endpoint",
    "Graph",
    "ReaderEndpoint",
    "RegistryEndpoint",
    "Transferred",
    "copy_graph",
    "walk",
]

EMPTY_CONFIG = Descriptor(media_type="application/vnd.oci.empty.v1+json", size=2,
                          digest="sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")

_INDEX_TYPES = {MEDIA.INDEX, MEDIA.DOCKER_LIST}

_PIECE = 256 << 10  # written as it arrives: a cut connection loses at most this much of a blob


class Endpoint(Protocol):
    """Somewhere OCI content lives."""

    what: str

    def has_blob(self, digest: str) -> bool: ...

    def open_blob(self, digest: str, *, offset: int = 0) -> AbstractContextManager[IO[bytes]]: ...

    def read_manifest(self, digest: str) -> bytes: ...

    def has_manifest(self, digest: str) -> bool: ...

    def put_blob(self, blob: Descriptor, source: Endpoint, advance: Advance) -> bool:
        """Store the blob from ``source``: True when its bytes were sent, False when the destination linked
        it from what it holds elsewhere (a registry's cross-repository mount)."""
        ...

    def put_manifest(self, manifest: Descriptor, body: bytes, *, tag: str | None = None) -> bool:
        """Store the manifest (under ``tag`` too); False if it was there already."""
        ...


@dataclass
class Graph:
    """A bundle (or any OCI artifact): its top manifest, every manifest children first, every other blob once."""

    top: Descriptor
    manifests: list[tuple[Descriptor, bytes]] = field(default_factory=list)
    blobs: list[Descriptor] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(d.size for d in self.blobs) + sum(len(body) for _, body in self.manifests)


@dataclass
class Transferred:
    """What one copy moved, and what it found already there."""

    blobs_sent: int = 0
    bytes_sent: int = 0
    blobs_present: int = 0
    bytes_present: int = 0
    blobs_mounted: int = 0  # linked by the registry from another of its repositories: present now, nothing sent
    bytes_mounted: int = 0
    blobs_rebuilt: int = 0  # made from a base held here and a chunk delta (whose bytes count as sent)
    bytes_rebuilt: int = 0

    def add(self, other: Transferred) -> None:
        self.blobs_sent += other.blobs_sent
        self.bytes_sent += other.bytes_sent
        self.blobs_present += other.blobs_present
        self.bytes_present += other.bytes_present
        self.blobs_mounted += other.blobs_mounted
        self.bytes_mounted += other.bytes_mounted
        self.blobs_rebuilt += other.blobs_rebuilt
        self.bytes_rebuilt += other.bytes_rebuilt

    def to_json(self) -> dict[str, int]:
        return {"blobs_sent": self.blobs_sent, "bytes_sent": self.bytes_sent, "blobs_present": self.blobs_present,
                "bytes_present": self.bytes_present, "blobs_mounted": self.blobs_mounted, "bytes_mounted": self.bytes_mounted,
                "blobs_rebuilt": self.blobs_rebuilt, "bytes_rebuilt": self.bytes_rebuilt}


def walk(top: Descriptor, store: Endpoint) -> Graph:
    """Read the graph below ``top`` from ``store``; every manifest's digest and size are checked."""
    graph = Graph(top=top)
    seen_blobs: set[str] = set()
    seen_manifests: set[str] = set()

    def visit(node: Descriptor, depth: int) -> None:
        if node.digest in seen_manifests:
            return
        if depth > 4:
            raise Refused(f"{store.what}: manifests nest deeper than a bundle does (at {node.digest})")
        body = checked_json(store.read_manifest(node.digest), node, store.what)
        data = json_object(body, f"{store.what}: manifest {node.digest}")  # its digest matched: malformed is a bad artifact
        media_type = data.get("mediaType", node.media_type)
        if media_type in _INDEX_TYPES:
            for child in _descriptors(data.get("manifests"), node, store.what):
                visit(child, depth + 1)
        elif media_type in MEDIA.IMAGE_MANIFESTS:
            for blob in (Descriptor.from_json(data.get("config"), where=f"{store.what}: manifest {node.digest}"),
                         *_descriptors(data.get("layers"), node, store.what)):
                if blob.digest not in seen_blobs:
                    seen_blobs.add(blob.digest)
                    graph.blobs.append(blob)
        else:
            raise Refused(f"{store.what}: {node.digest} has media type {media_type!r}, not an OCI index or manifest")
        seen_manifests.add(node.digest)
        graph.manifests.append((node, body))

    visit(top, 0)
    return graph


def copy_graph(graph: Graph, source: Endpoint, dest: Endpoint, *, tag: str | None = None,
               advance: Advance = lambda _: None) -> Transferred:
    """Send what ``dest`` lacks of ``graph``: blobs first, then manifests children first, the top last."""
    moved = Transferred()
    for blob in graph.blobs:
        if dest.has_blob(blob.digest):
            moved.blobs_present += 1
            moved.bytes_present += blob.size
            advance(blob.size)
            continue
        if dest.put_blob(blob, source, advance):
            moved.blobs_sent += 1
            moved.bytes_sent += blob.size
        else:
            moved.blobs_mounted += 1
            moved.bytes_mounted += blob.size
    for manifest, body in graph.manifests:
        top = manifest.digest == graph.top.digest
        if ((top and tag) or not dest.has_manifest(manifest.digest)) and dest.put_manifest(manifest, body, tag=tag if top else None):
            moved.bytes_sent += len(body)
    return moved


def _descriptors(items: object, node: Descriptor, what: str) -> list[Descriptor]:
    if not isinstance(items, list):
        raise Refused(f"{what}: manifest {node.digest} lacks its list of parts")
    return [Descriptor.from_json(item, where=f"{what}: manifest {node.digest}") for item in items]


# --- endpoints -------------------------------------------------------------------------------------


class ReaderEndpoint:
    """A bundle or medium on disk, read-only (through the hardened layout reader)."""

    def __init__(self, reader: LayoutReader) -> None:
        self.reader = reader
        self.what = reader.location
        self.names = reader.blob_names()

    def has_blob(self, digest: str) -> bool:
        return digest in self.names

    @contextmanager
    def open_blob(self, digest: str, *, offset: int = 0) -> Iterator[IO[bytes]]:
        with self.reader.open_blob(digest) as stream:
            if offset:
                _skip(stream, offset)
            yield stream

    def read_manifest(self, digest: str) -> bytes:
        if digest not in self.names:
            raise Refused(f"{self.what}: manifest {digest} is missing")
        with self.reader.open_blob(digest) as stream:
            return stream.read(MAX_JSON_BYTES + 1)

    def has_manifest(self, digest: str) -> bool:
        return self.has_blob(digest)

    def put_blob(self, blob: Descriptor, source: Endpoint, advance: Advance) -> bool:
        raise DeliveryError(f"{self.what}: read-only")

    def put_manifest(self, manifest: Descriptor, body: bytes, *, tag: str | None = None) -> bool:
        raise DeliveryError(f"{self.what}: read-only")


class RegistryEndpoint:
    """A repository in a registry. A blob it lacks is first mounted from the repositories of the same
    registry named in ``mount_from`` (no byte sent), else uploaded."""

    def __init__(self, client: RegistryClient, *, mount_from: Sequence[str] = ()) -> None:
        self.client = client
        self.what = client.what
        self.mount_from = [r for r in mount_from if r != client.ref.repository]

    def has_blob(self, digest: str) -> bool:
        return self.client.has_blob(digest)

    def open_blob(self, digest: str, *, offset: int = 0) -> AbstractContextManager[IO[bytes]]:
        return self.client.open_blob(digest, offset=offset)

    def read_manifest(self, digest: str) -> bytes:
        found = self.client.get_manifest(digest)
        if found is None:
            raise DeliveryError(f"{self.what}: manifest {digest} is missing from the registry")
        return found[0]

    def has_manifest(self, digest: str) -> bool:
        return self.client.has_manifest(digest)

    def put_blob(self, blob: Descriptor, source: Endpoint, advance: Advance) -> bool:
        if any(self.client.mount_blob(blob.digest, repository) for repository in self.mount_from):
            advance(blob.size)
            return False
        upload_blob(self.client, blob, lambda offset: source.open_blob(blob.digest, offset=offset), advance, what=source.what)
        return True

    def put_manifest(self, manifest: Descriptor, body: bytes, *, tag: str | None = None) -> bool:
        if tag is not None and self.client.manifest_digest(tag) == manifest.digest:
            return False
        self.client.put_manifest(tag or manifest.digest, body, manifest.media_type)
        return True


class DirectoryEndpoint:
    """An OCI layout directory being written (a pulled bundle, a medium, the device's store).

    A blob is written to ``blobs/sha256/.partial-HEX``, its digest checked, synced and renamed to
    its name; an interrupted copy leaves the partial file, and the next copy resumes from its
    end (with a ranged request where the source is a registry). ``index.json`` is written last.
    """

    def __init__(self, root: Path, *, what: str | None = None) -> None:
        self.root = root
        self.what = what or str(root)
        self.blobs = root / "blobs" / "sha256"
        self.manifests: dict[str, bytes] = {}

    def prepare(self) -> None:
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
        except OSError as e:
            raise DeviceFault(f"{self.what}: cannot write ({_why(e)})") from e

    def path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self.path(digest).is_file()

    @contextmanager
    def open_blob(self, digest: str, *, offset: int = 0) -> Iterator[IO[bytes]]:
        try:
            stream = open(self.path(digest), "rb")  # noqa: SIM115 (closed by the with below)
        except OSError as e:
            raise DeviceFault(f"{self.what}: blob {digest} cannot be read ({_why(e)})") from e
        with stream:
            stream.seek(offset)
            yield stream

    def read_manifest(self, digest: str) -> bytes:
        with self.open_blob(digest) as stream:
            return stream.read(MAX_JSON_BYTES + 1)

    def has_manifest(self, digest: str) -> bool:
        return self.has_blob(digest)

    def put_blob(self, blob: Descriptor, source: Endpoint, advance: Advance) -> bool:
        partial = self.blobs / f".partial-{blob.digest.removeprefix('sha256:')}"
        try:
            with open(partial, "ab+") as out:
                sha, done = _hash_existing(out, blob.size)  # what an interrupted copy left: not fetched again
                advance(done)
                checked = Hashed(None, digest=blob.digest, size=blob.size, what=f"{source.what}: blob {blob.digest}",
                                 advance=advance, sha=sha, done=done)
                if done < blob.size:
                    with source.open_blob(blob.digest, offset=done) as stream:
                        checked.source = stream
                        while chunk := _read_from(source, checked, blob):
                            out.write(chunk)
                checked.finish()
                out.flush()
                os.fsync(out.fileno())
            os.rename(partial, self.path(blob.digest))
            return True
        except ContentMismatch:
            partial.unlink(missing_ok=True)  # not the blob it claims to be: keep nothing of it
            raise
        except OSError as e:  # (a transfer cut short, a DeliveryError, keeps the partial file: the next copy resumes it)
            with contextlib.suppress(OSError):  # the device's fault (a full disk): what was written would keep it full
                partial.unlink(missing_ok=True)
            raise DeviceFault(f"{self.what}: cannot write blob {blob.digest} ({_why(e)})") from e

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        """Store a small blob (a manifest, a descriptor) durably; return its descriptor."""
        blob = Descriptor(media_type=media_type, digest=f"sha256:{hashlib.sha256(data).hexdigest()}", size=len(data))
        if not self.has_blob(blob.digest):
            self._durable(self.path(blob.digest), data, f"blob {blob.digest}")
        return blob

    def drop_partial(self, digest: str) -> None:
        (self.blobs / f".partial-{digest.removeprefix('sha256:')}").unlink(missing_ok=True)

    def drop_partials(self) -> None:
        """Remove what unfinished copies left (partial blobs, temporary files)."""
        for leftover in self.blobs.glob(".*"):
            leftover.unlink(missing_ok=True)

    def link_blob(self, blob: Descriptor, existing: Path) -> bool:
        """Take ``blob`` from another layout on the same file system (a hard link); False if it cannot."""
        try:
            if existing.stat().st_size != blob.size:
                return False
            os.link(existing, self.path(blob.digest))
        except FileExistsError:
            return True
        except OSError:
            return False
        return True

    def put_manifest(self, manifest: Descriptor, body: bytes, *, tag: str | None = None) -> bool:
        target = self.path(manifest.digest)
        if target.is_file():
            return False
        self._durable(target, body, f"manifest {manifest.digest}")
        return True

    def finish(self, tops: list[Descriptor]) -> None:
        """Write ``index.json`` naming ``tops`` (durably, after every blob): from now on the layout is complete."""
        try:
            fsync_dir(self.blobs)
        except OSError as e:
            raise DeviceFault(f"{self.what}: cannot write index.json ({_why(e)})") from e
        index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA.INDEX, "manifests": [t.to_json() for t in tops]})
        self._durable(self.root / "index.json", index, "index.json")

    def write_metadata(self, files: dict[str, bytes]) -> None:
        """Put signed metadata files into the layout's ``tuf/`` folder."""
        folder = self.root / "tuf"
        try:
            folder.mkdir(exist_ok=True)
        except OSError as e:
            raise DeviceFault(f"{self.what}: cannot write tuf/ ({_why(e)})") from e
        for name, data in files.items():
            if not METADATA_NAME.fullmatch(name):
                raise Refused(f"{self.what}: {name[:80]!r} is not a metadata file name")
            self._durable(folder / name, data, f"tuf/{name}")

    def _durable(self, path: Path, data: bytes, what: str) -> None:
        try:
            replace_file(path, data)
        except OSError as e:
            raise DeviceFault(f"{self.what}: cannot write {what} ({_why(e)})") from e


def _read_from(source: Endpoint, checked: Hashed, blob: Descriptor) -> bytes:
    """The next piece of a blob; a source that fails to read (a medium pulled out, a bad sector) is a
    delivery error, which keeps what arrived so far: the next copy resumes it."""
    try:
        return checked.read(_PIECE)
    except OSError as e:
        raise DeliveryError(f"{source.what}: reading blob {blob.digest} failed ({_why(e)}); run again to resume") from e


def _hash_existing(out: IO[bytes], size: int) -> tuple[Any, int]:
    """Hash what a partial file already holds (emptying it if it is longer than the blob)."""
    out.seek(0)
    sha = hashlib.sha256()
    done = 0
    while chunk := out.read(CHUNK):
        sha.update(chunk)
        done += len(chunk)
    if done > size:
        out.truncate(0)
        return hashlib.sha256(), 0
    return sha, done


def _skip(stream: IO[bytes], offset: int) -> None:
    try:
        stream.seek(offset)
    except (OSError, ValueError):
        while offset:
            offset -= len(stream.read(min(CHUNK, offset)) or b"\0" * offset)


def _why(error: OSError) -> str:
    return "the disk is full" if error.errno == 28 else (error.strerror or str(error))
