"""Chunk deltas of a bundle against an earlier one, made at the office and carried by mirror syncs.

The format and how a receiver uses a delta are in :mod:`updater.deltas`. Each large blob of the
new bundle that the base lacks is paired with the base's blob in the same place: the payload
layer of the same title (a model, a config archive), or the layer at the same position of the
image of the same name. Each pair is cut by :func:`bundler.chunking.chunk_delta`; a pair whose
delta would save nothing is left to travel whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.chunking import chunk_delta
from updater.artifact import open_artifact
from updater.deltas import (
    BASE_DIGEST,
    BASE_VERSION,
    DELTA_TYPE,
    INDEX_MEDIA,
    LARGE,
    MAX_INDEX,
    PACK_MEDIA,
    TARGET,
    listed,
    read_deltas,
    referrers_tag,
    take,
)
from updater.errors import DeliveryError, DeviceFault, InputError, Refused
from updater.oci import ANNOTATION, MEDIA, Descriptor, canonical_json, json_object
from updater.registry import RegistryClient, connect
from updater.transfer import (
    EMPTY_CONFIG,
    DirectoryEndpoint,
    Endpoint,
    Graph,
    ReaderEndpoint,
    RegistryEndpoint,
    Transferred,
    copy_graph,
    walk,
)

__all__ = ["BaseBundle", "BuiltDelta", "carry_deltas", "list_delta", "make_delta", "open_base", "pairs", "push_delta"]

_OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class BaseBundle:
    """A bundle a delta is made against: who it is, its graph, and where its blobs are read."""

    name: str
    profile: str
    version: str
    graph: Graph
    source: Endpoint

    @property
    def blobs(self) -> set[str]:
        return {d.digest for d in self.graph.blobs}


@dataclass
class BuiltDelta:
    """A chunk delta written to a layout: its manifest, and what it stands for."""

    manifest: Descriptor
    body: bytes
    layout: DirectoryEndpoint
    blobs: list[Descriptor] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # the blobs it rebuilds
    whole: int = 0  # their size
    moved: int = 0  # the size of its indexes and packs

    @property
    def graph(self) -> Graph:
        return Graph(top=self.manifest, manifests=[(self.manifest, self.body)], blobs=list(self.blobs))

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.manifest.digest, "blobs_rebuilt": len(self.targets), "bytes_rebuilt": self.whole,
                "bytes": self.moved}


def open_base(base: str, *, plain_http: bool, stack: ExitStack) -> BaseBundle:
    """The base bundle given as a path (a bundle or a pulled layout) or a registry reference."""
    path = Path(base)
    source: Endpoint
    if path.exists():
        artifact = stack.enter_context(open_artifact(path))
        source, top = ReaderEndpoint(artifact.reader), artifact.top
        body = source.read_manifest(top.digest)
    elif base.startswith(("/", ".", "~")):
        raise InputError(f"base {base}: no such bundle")
    else:
        client = connect(base, plain_http=plain_http, what="base")
        stack.callback(client.close)
        found = client.get_manifest(client.ref.digest or client.ref.tag or "latest")
        if found is None:
            raise DeliveryError(f"base {base}: neither a bundle on disk nor a bundle in the registry")
        body, media_type, digest = found
        top = Descriptor(media_type=media_type, digest=digest, size=len(body))
        source = RegistryEndpoint(client)
    try:
        annotations = json_object(body, f"base {base}")["annotations"]
        name, profile, version = (str(annotations[k]) for k in (ANNOTATION.NAME, ANNOTATION.PROFILE, ANNOTATION.VERSION))
    except (KeyError, TypeError) as e:
        raise Refused(f"base {base}: not a Sealift bundle") from e
    return BaseBundle(name=name, profile=profile, version=version, graph=walk(top, source), source=source)


def pairs(target: Graph, base: Graph) -> list[tuple[Descriptor, Descriptor]]:
    """(target blob, base blob) for each large blob of ``target`` that ``base`` lacks and holds in the same place."""
    held = {d.digest for d in base.blobs}
    places = dict(_places(base))
    return [(blob, places[place]) for place, blob in _places(target)
            if blob.size >= LARGE and blob.digest not in held and place in places]


def _places(graph: Graph) -> Iterator[tuple[tuple[str, ...], Descriptor]]:
    """Each layer of the graph with where it sits: its title, or its image and position."""
    for node, body in graph.manifests:
        data = json_object(body, f"manifest {node.digest}")
        image = node.annotations.get(ANNOTATION.IMAGE, "")
        for position, item in enumerate(data.get("layers") or []):
            layer = Descriptor.from_json(item, where=f"manifest {node.digest}")
            title = layer.annotations.get(ANNOTATION.TITLE)
            yield (("title", title) if title else ("layer", image, str(position))), layer


def make_delta(target: Graph, source: Endpoint, base: BaseBundle, layout: DirectoryEndpoint, work: Path, *,
               advance: Callable[[int], None] = lambda _: None) -> BuiltDelta | None:
    """Write the chunk delta of ``target`` (read from ``source``) against ``base`` into ``layout`` (the blobs
    compared are copied into ``work`` first); None when no large blob of it gains from one."""
    scratch = DirectoryEndpoint(work, what="delta scratch")
    scratch.prepare()
    layers: list[Descriptor] = []
    targets: list[str] = []
    whole = moved = 0
    for wanted, old in pairs(target, base.graph):
        for blob, where in ((wanted, source), (old, base.source)):
            if not scratch.has_blob(blob.digest):
                scratch.put_blob(blob, where, advance)
        pack_file = work / ".pack"
        delta = chunk_delta(scratch.path(old.digest), scratch.path(wanted.digest), pack_file,
                            base_digest=old.digest, target_digest=wanted.digest)
        for done in (wanted, old):  # copies of large blobs: gone before the next pair's
            scratch.path(done.digest).unlink(missing_ok=True)
        indexes = sum(d.size for d in layers if d.media_type == INDEX_MEDIA)  # a receiver reads MAX_INDEX bytes of them at most
        if delta.pack_size + len(delta.index) >= wanted.size or indexes + len(delta.index) > MAX_INDEX:
            continue  # it changed entirely (the whole blob is no larger), or its index is more than a receiver reads
        written = layout.put_bytes(delta.index, INDEX_MEDIA)
        index = Descriptor(media_type=INDEX_MEDIA, digest=written.digest, size=written.size, annotations={TARGET: wanted.digest})
        pack = Descriptor(media_type=PACK_MEDIA, digest=delta.pack_digest, size=delta.pack_size)
        shutil.move(pack_file, layout.path(pack.digest))
        with open(layout.path(pack.digest), "rb") as kept:
            os.fsync(kept.fileno())  # as every blob of a layout is before index.json names it
        layers += [index, pack]
        targets.append(wanted.digest)
        whole += wanted.size
        moved += index.size + pack.size
    shutil.rmtree(scratch.root, ignore_errors=True)
    if not layers:
        return None
    layout.put_bytes(b"{}", EMPTY_CONFIG.media_type)
    subject = target.top
    names_base = {BASE_DIGEST: base.graph.top.digest, BASE_VERSION: base.version}
    body = canonical_json({
        "schemaVersion": 2, "mediaType": MEDIA.MANIFEST, "artifactType": DELTA_TYPE, "config": EMPTY_CONFIG.to_json(),
        "layers": [d.to_json() for d in layers],
        "subject": Descriptor(media_type=subject.media_type, digest=subject.digest, size=subject.size).to_json(),
        "annotations": names_base})
    written = layout.put_bytes(body, MEDIA.MANIFEST)
    manifest = Descriptor(media_type=MEDIA.MANIFEST, digest=written.digest, size=written.size, artifact_type=DELTA_TYPE,
                          annotations=names_base)
    return BuiltDelta(manifest=manifest, body=body, layout=layout, blobs=[EMPTY_CONFIG, *layers], targets=targets, whole=whole,
                      moved=moved)


def list_delta(client: RegistryClient, subject: str, delta: Descriptor) -> None:
    """Name ``delta`` in the registry's list of what refers to the bundle ``subject`` (the referrers tag
    schema: an image index tagged ``sha256-HEX``), beside the deltas on other bases already there."""
    tag = referrers_tag(subject)
    found = client.get_manifest(tag, accept=MEDIA.INDEX)
    entries: list[dict[str, Any]] = []
    if found is not None:
        try:
            listed = json_object(found[0], f"{client.what}: {tag}").get("manifests")
        except Refused:
            listed = None
        entries = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []  # one unreadable is replaced
    if any(e.get("digest") == delta.digest for e in entries):
        return
    entries.append(delta.to_json())
    client.put_manifest(tag, canonical_json({"schemaVersion": 2, "mediaType": MEDIA.INDEX, "manifests": entries}), MEDIA.INDEX)


def push_delta(built: BuiltDelta, client: RegistryClient, subject: str, *, advance: Callable[[int], None] = lambda _: None) -> Transferred:
    """Send the delta to the registry and list it under the bundle ``subject``."""
    moved = copy_graph(built.graph, built.layout, RegistryEndpoint(client), advance=advance)
    list_delta(client, subject, built.manifest)
    return moved


def carry_deltas(src: RegistryClient, dst: RegistryClient, top: Descriptor, graph: Graph, work: Path, *,
                 warn: Callable[[str], None], same_registry: bool = False) -> Transferred:
    """Copy the chunk deltas ``src`` lists for the bundle ``top`` into ``dst``, and rebuild there each large
    blob of ``graph`` that ``dst`` lacks from a base it holds, so that only the chunks cross from ``src``.

    Each delta blob crosses once; the rebuild then reads the index, the pack and the base back from
    ``dst``, on the mirror's side of the hop. ``work`` holds at most a base, a pack and the blob being
    rebuilt at a time. Within ``same_registry`` blobs are linked, so nothing is rebuilt."""
    moved = Transferred()
    manifests = listed(src, top.digest, warn=lambda why: warn(f"{why}; its chunk deltas are not carried"))
    if not manifests:
        return moved
    source, dest = RegistryEndpoint(src), RegistryEndpoint(dst, mount_from=[src.ref.repository] if same_registry else [])
    carried = []
    for manifest in manifests:
        try:
            delta_graph = walk(manifest, source)
        except (Refused, DeliveryError) as e:
            warn(f"{e}; that chunk delta is not carried")
            continue
        for blob in delta_graph.blobs:
            if not dest.has_blob(blob.digest) and dest.put_blob(blob, source, lambda _: None):
                moved.blobs_sent += 1
                moved.bytes_sent += blob.size
        for node, body in delta_graph.manifests:
            dest.put_manifest(node, body)
        list_delta(dst, top.digest, manifest)
        carried.append(manifest)
    needed = {b.digest: b for b in graph.blobs if b.size >= LARGE and not dest.has_blob(b.digest)}
    if not needed or same_registry:
        return moved
    scratch = DirectoryEndpoint(work, what="delta scratch")
    scratch.prepare()
    found = read_deltas(dest, carried, needed, warn=lambda why: warn(f"{why}; the whole blob is copied instead"),
                        has_base=dest.has_blob)
    for digest, delta in found.items():
        base = Descriptor(media_type=_OCTETS, digest=delta.base, size=delta.index.base.size)
        try:
            scratch.put_blob(base, dest, lambda _: None)
            take(delta, dest, scratch, scratch.path(base.digest))
        except (Refused, DeviceFault) as e:
            warn(f"{e}; the whole blob is copied instead")
            continue
        finally:
            scratch.path(base.digest).unlink(missing_ok=True)
        dest.put_blob(needed[digest], scratch, lambda _: None)
        scratch.path(digest).unlink()
        moved.blobs_rebuilt += 1
        moved.bytes_rebuilt += needed[digest].size
    return moved
