"""Chunk deltas as OCI content: a large blob travels as the chunks its base lacks.

A chunk delta of a bundle is an OCI manifest (artifact type :data:`DELTA_TYPE`) whose ``subject``
is the bundle's index and whose layers are, for each large blob of the bundle that changed, a
chunk index (:data:`INDEX_MEDIA`, see :mod:`updater.chunks`; annotated with the blob it rebuilds,
:data:`TARGET`) and the pack of new chunks it names (:data:`PACK_MEDIA`). Its annotations name
the base bundle (its version and index digest). In a registry it is listed under the bundle the
way the OCI referrers tag schema lists referrers: an image index tagged ``sha256-HEX`` (the
bundle's digest) names each delta; on a medium, ``sealift-medium.json`` names it beside the
bundle. Any place that holds a bundle's blobs can hold its deltas too, and a mirror sync carries
them like any other OCI content.

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
from updater.errors import DeliveryError, DeviceFault, Refused, SealiftError
from updater.oci import MEDIA, Advance, Descriptor, json_object
from updater.transfer import DirectoryEndpoint, Endpoint, Transferred

if TYPE_CHECKING:
    from updater.registry import RegistryClient

__all__ = ["BASE_DIGEST", "BASE_VERSION", "DELTA_TYPE", "INDEX_MEDIA", "LARGE", "PACKS", "PACK_MEDIA", "TARGET", "Delta",
           "listed", "read_deltas", "referrers_tag", "take", "take_all"]

DELTA_TYPE = "application/vnd.sealift.delta.v1+json"
INDEX_MEDIA = "application/vnd.sealift.chunks.index.v1"
PACK_MEDIA = "application/vnd.sealift.chunks.pack.v1"
BASE_DIGEST = "dev.sealift.delta.base.digest"
BASE_VERSION = "dev.sealift.delta.base.version"
TARGET = "dev.sealift.delta.target"  # on an index layer: the blob it rebuilds (checked against the index)
PACKS = ".packs"  # a receiver's folder for packs being fetched or used, beside the blobs (never part of a bundle)
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
    where = f"{client.what}: {referrers_tag(subject)}"
    try:
        found = client.get_manifest(referrers_tag(subject), accept=MEDIA.INDEX)
        if found is None:
            return []
        entries = json_object(found[0], where).get("manifests")
        if not isinstance(entries, list):
            raise Refused(f"{where}: not a list of manifests")
        offered = [Descriptor.from_json(e, where=where) for e in entries]
    except (Refused, DeliveryError) as e:
        warn(str(e))
        return []
    return [d for d in offered if d.artifact_type == DELTA_TYPE]


def read_deltas(source: Endpoint, manifests: Iterable[Descriptor], wanted: dict[str, Descriptor], *,
                warn: Callable[[SealiftError], None], has_base: Callable[[str], bool] = lambda _: True) -> dict[str, Delta]:
    """The deltas, among those ``manifests`` name, of the blobs in ``wanted`` (by digest), each on a base
    ``has_base`` accepts; why one is passed over is said through ``warn``. At most one index is read per
    wanted blob and manifest, and at most MAX_INDEX bytes of indexes in all: a listing is not trusted."""
    deltas: dict[str, Delta] = {}
    budget = [MAX_INDEX]
    for manifest in manifests:
        lacking = {digest: blob for digest, blob in wanted.items() if digest not in deltas}
        if not lacking or budget[0] <= 0:
            break
        try:
            for delta in _read_one(source, manifest, lacking, budget, warn):
                if has_base(delta.base):
                    deltas.setdefault(delta.target, delta)
        except (Refused, DeliveryError) as e:
            warn(e)
    return deltas


def _read_one(source: Endpoint, manifest: Descriptor, wanted: dict[str, Descriptor], budget: list[int],
              warn: Callable[[SealiftError], None]) -> list[Delta]:
    what = f"{source.what}: chunk delta {manifest.digest[:19]}"
    data = json_object(checked_json(source.read_manifest(manifest.digest), manifest, what), what)
    items = data.get("layers")
    if not isinstance(items, list):
        raise Refused(f"{what}: lists no layers")
    layers = [Descriptor.from_json(layer, where=what) for layer in items]
    packs = {layer.digest: layer for layer in layers if layer.media_type == PACK_MEDIA}
    found = []
    for layer in layers:
        target = wanted.pop(layer.annotations.get(TARGET, ""), None) if layer.media_type == INDEX_MEDIA else None
        if target is None:
            continue  # another layer, a blob this receiver has or does not need, or one whose index was read already
        if layer.size > budget[0]:  # what was read is kept; the rest travel whole
            warn(Refused(f"{what}: its chunk indexes are larger than {MAX_INDEX} bytes in all"))
            break
        budget[0] -= layer.size
        index = read_index(read_small_blob(source, layer, MAX_INDEX, f"{what}: chunk index"), f"{what}: chunk index {layer.digest[:19]}")
        pack = packs.get(index.pack.digest)
        if index.target.digest != target.digest or target.size != index.target.size or pack is None or pack.size != index.pack.size:
            raise Refused(f"{what}: its index for {target.digest[:19]} names another blob, other sizes or a pack the delta "
                          "does not hold")
        if pack.size < target.size:  # a delta no smaller than its blob saves nothing
            found.append(Delta(index=index, index_blob=layer, pack=pack))
    return found


def take(delta: Delta, source: Endpoint, work: DirectoryEndpoint, base: Path, *, advance: Advance = lambda _: None) -> int:
    """Fetch the delta's pack from ``source`` into ``work``'s PACKS folder (digest-checked; a cut fetch
    resumes) and rebuild its target blob in ``work`` from ``base``; the pack is removed once the blob is
    made or refused. Returns the bytes fetched (none when a rebuild cut short left the pack there)."""
    packs = DirectoryEndpoint(work.root / PACKS, what=f"{work.what} (chunk packs)")
    packs.prepare()
    fetched = 0
    if not packs.has_blob(delta.pack.digest):
        packs.put_blob(delta.pack, source, lambda _: None)
        fetched = delta.pack.size
    what = f"{work.what}: blob {delta.target[:19]} from its chunk delta"
    try:
        with open(base, "rb") as old, open(packs.path(delta.pack.digest), "rb") as pack:
            rebuild(delta.index, old, pack, work.path(delta.target), what=what, pack_checked=True, advance=advance)
    except OSError as e:
        raise DeviceFault(f"{what}: its base or pack cannot be read ({e.strerror or e})") from e
    finally:
        packs.path(delta.pack.digest).unlink(missing_ok=True)
    return fetched


def take_all(deltas: dict[str, Delta], needed: Iterable[Descriptor], source: Endpoint, work: DirectoryEndpoint,
             find_base: Callable[[str], Path | None], *, warn: Callable[[SealiftError], None],
             advance: Advance = lambda _: None) -> Transferred:
    """Rebuild each blob of ``needed`` that has a delta whose base ``find_base`` finds; why a delta is
    not used (refused, or a base that cannot be read) is said through ``warn``, and its blob left for
    the whole blob to be fetched."""
    moved = Transferred()
    for blob in needed:
        delta = deltas.get(blob.digest)
        if delta is None or work.has_blob(blob.digest) or (base := find_base(delta.base)) is None:
            continue
        try:
            fetched = take(delta, source, work, base, advance=advance)
        except (Refused, DeviceFault) as e:
            warn(e)
            continue
        except DeliveryError as e:
            if source.has_blob(delta.pack.digest):
                raise  # a cut connection: the pack fetched so far is kept, and the next try resumes it
            warn(e)  # a delta whose pack is not there: the whole blob is
            continue
        moved.blobs_rebuilt += 1
        moved.bytes_rebuilt += blob.size
        moved.bytes_sent += fetched + delta.index_blob.size
    return moved
