"""Chunk deltas as OCI content: a large blob travels as the chunks its base lacks.

A chunk delta of a bundle is an OCI manifest (artifact type :data:`DELTA_TYPE`) whose ``subject``
is the bundle's index and whose layers are, for each large blob of the bundle that changed, a
chunk index (:data:`INDEX_MEDIA`, see :mod:`updater.chunks`) and the pack of new chunks it names
(:data:`PACK_MEDIA`). Its annotations name the base bundle (its version and index digest). In a
registry it is listed under the bundle the way the OCI referrers tag schema lists referrers: an
image index tagged ``sha256-HEX`` (the bundle's digest) names each delta; on a medium,
``sealift-medium.json`` names it beside the bundle. Any place that holds a bundle's blobs can hold
its deltas too, and a mirror sync carries them like any other OCI content.

A delta is never trusted: its index and pack only propose how to make a blob the signed bundle
names by digest. The blob is rebuilt from a base the receiver already holds (checked when it
arrived), its sha256 checked, and only then kept; a delta that does not add up, or whose base
the receiver lacks, is passed over and the whole blob fetched instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from updater.chunks import ChunkIndex, read_index, rebuild
from updater.content import checked_json, read_small_blob
from updater.errors import DeliveryError, Refused
from updater.oci import MEDIA, Advance, Descriptor, json_object
from updater.transfer import DirectoryEndpoint, Endpoint, Transferred

if TYPE_CHECKING:
    from updater.registry import RegistryClient

__all__ = ["BASE_DIGEST", "BASE_VERSION", "DELTA_TYPE", "INDEX_MEDIA", "LARGE", "PACK_MEDIA", "Delta", "listed",
           "read_deltas", "referrers_tag", "take", "take_all"]

DELTA_TYPE = "application/vnd.sealift.delta.v1+json"
INDEX_MEDIA = "application/vnd.sealift.chunks.index.v1"
PACK_MEDIA = "application/vnd.sealift.chunks.pack.v1"
BASE_DIGEST = "dev.sealift.delta.base.digest"
BASE_VERSION = "dev.sealift.delta.base.version"
LARGE = 16 << 20  # blobs at least this large get a chunk delta; smaller ones travel whole
MAX_INDEX = 32 << 20  # an index is read into memory: ~7.5 MiB per GiB of a blob that changed entirely


@dataclass(frozen=True)
class Delta:
    """One blob's chunk delta: the index (read and consistent) and the pack it names."""

    index: ChunkIndex
    index_blob: Descriptor
    pack: Descriptor

    @property
    def target(self) -> str:
        return self.index.target.digest

    @property
    def base(self) -> str:
        return self.index.base.digest


def referrers_tag(digest: str) -> str:
    """The tag under which a registry without the referrers API lists what refers to ``digest``."""
    return digest.replace(":", "-")


def listed(client: RegistryClient, subject: str, *, warn: Callable[[str], None]) -> list[Descriptor]:
    """The chunk deltas the registry lists for the bundle ``subject`` (none when it lists none, or a
    list that cannot be read: a delta is only ever a shortcut)."""
    found = client.get_manifest(referrers_tag(subject), accept=MEDIA.INDEX)
    if found is None:
        return []
    where = f"{client.what}: {referrers_tag(subject)}"
    try:
        entries = json_object(found[0], where).get("manifests")
        if not isinstance(entries, list):
            raise Refused(f"{where}: not a list of manifests")
        listed = [Descriptor.from_json(e, where=where) for e in entries]
    except Refused as e:
        warn(str(e))
        return []
    return [d for d in listed if d.artifact_type == DELTA_TYPE]


def read_deltas(source: Endpoint, manifests: Iterable[Descriptor], wanted: dict[str, Descriptor],
                *, warn: Callable[[str], None]) -> dict[str, Delta]:
    """The deltas, among those ``manifests`` name, of the blobs in ``wanted`` (by digest); why a delta that
    does not add up is passed over is said through ``warn``."""
    deltas: dict[str, Delta] = {}
    for manifest in manifests:
        try:
            for delta in _read_one(source, manifest, wanted):
                deltas.setdefault(delta.target, delta)
        except Refused as e:
            warn(str(e))
        except DeliveryError as e:
            warn(f"{source.what}: chunk delta {manifest.digest[:19]} cannot be read ({e})")
    return deltas


def _read_one(source: Endpoint, manifest: Descriptor, wanted: dict[str, Descriptor]) -> list[Delta]:
    what = f"{source.what}: chunk delta {manifest.digest[:19]}"
    data = json_object(checked_json(source.read_manifest(manifest.digest), manifest, what), what)
    items = data.get("layers")
    if not isinstance(items, list):
        raise Refused(f"{what}: lists no layers")
    layers = [Descriptor.from_json(layer, where=what) for layer in items]
    packs = {layer.digest: layer for layer in layers if layer.media_type == PACK_MEDIA}
    found = []
    for layer in layers:
        if layer.media_type != INDEX_MEDIA:
            continue
        body = read_small_blob(source, layer, MAX_INDEX, f"{what}: chunk index")
        index = read_index(body, f"{what}: chunk index {layer.digest[:19]}")
        target = wanted.get(index.target.digest)
        if target is None:
            continue  # a blob this receiver has, or does not need
        pack = packs.get(index.pack.digest)
        if target.size != index.target.size or pack is None or pack.size != index.pack.size:
            raise Refused(f"{what}: its index for {target.digest[:19]} names sizes or a pack the delta does not hold")
        if pack.size < target.size:  # a delta no smaller than its blob saves nothing
            found.append(Delta(index=index, index_blob=layer, pack=pack))
    return found


def take(delta: Delta, source: Endpoint, work: DirectoryEndpoint, base: Path, *, advance: Advance = lambda _: None) -> int:
    """Fetch the delta's pack from ``source`` into ``work`` (digest-checked; a cut fetch resumes) and
    rebuild its target blob there from ``base``; the pack is removed once the blob is made or refused.
    Returns the bytes fetched (none when an earlier, cut-short rebuild left the pack there)."""
    fetched = 0
    if not work.has_blob(delta.pack.digest):
        work.put_blob(delta.pack, source, lambda _: None)
        fetched = delta.pack.size
    try:
        with open(base, "rb") as old, open(work.path(delta.pack.digest), "rb") as pack:
            rebuild(delta.index, old, pack, work.path(delta.target), what=f"{work.what}: blob {delta.target[:19]} from its chunk delta",
                    pack_checked=True, advance=advance)
    except OSError as e:
        raise Refused(f"{work.what}: the base or pack of blob {delta.target[:19]} cannot be read ({e.strerror or e})") from e
    finally:
        work.path(delta.pack.digest).unlink(missing_ok=True)
    return fetched


def take_all(deltas: dict[str, Delta], needed: Iterable[Descriptor], source: Endpoint, work: DirectoryEndpoint,
             find_base: Callable[[str], Path | None], *, warn: Callable[[str], None],
             advance: Advance = lambda _: None) -> Transferred:
    """Rebuild each blob of ``needed`` that has a delta whose base ``find_base`` finds; why a delta is
    refused is said through ``warn``, and its blob left for the whole blob to be fetched."""
    moved = Transferred()
    for blob in needed:
        delta = deltas.get(blob.digest)
        if delta is None or work.has_blob(blob.digest) or (base := find_base(delta.base)) is None:
            continue
        try:
            fetched = take(delta, source, work, base, advance=advance)
        except Refused as e:
            warn(str(e))
            continue
        moved.blobs_rebuilt += 1
        moved.bytes_rebuilt += blob.size
        moved.bytes_sent += fetched + delta.index_blob.size
    return moved
