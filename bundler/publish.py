"""Delivering bundles through OCI registries: ``push``, ``pull`` and ``mirror sync``.

A bundle keeps its digests everywhere: its blobs, its manifests and its top index are the same
bytes in the build output, in every registry and on the device. A bundle is tagged
``PROFILE-VERSION`` in its repository (``+`` becomes ``_``, which tags cannot hold), and its
signed TUF metadata is published beside it (see :mod:`updater.registry`). Only the blobs a
registry lacks are sent; a sync interrupted halfway sends, the next time, only what it had not
finished. Metadata is published after the bundles it signs, ``timestamp.json`` last, and never
replaced by an older version, so a device polling during a sync sees either the old release or
the new one, never a half.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.deltas import BuiltDelta, carry_deltas, make_delta, open_base, push_delta
from bundler.metadata_io import metadata_version
from updater.artifact import Artifact, Kind, kind, open_artifact
from updater.bundle import verify_bundle
from updater.errors import DeliveryError, InputError, Refused, SealiftError
from updater.oci import ANNOTATION, MAX_METADATA_BYTES, MEDIA, Descriptor, canonical_json
from updater.overlay import check_overlay
from updater.progress import Progress, QuietProgress
from updater.registry import (
    Reference,
    RegistryClient,
    bundle_descriptor,
    bundle_tag,
    connect,
    overlay_tag,
    parse_reference,
)
from updater.registry_metadata import METADATA_TAG_PREFIX, metadata_names, metadata_tag, read_metadata
from updater.transfer import EMPTY_CONFIG, DirectoryEndpoint, ReaderEndpoint, RegistryEndpoint, Transferred, copy_graph, walk
from updater.upload import upload_bytes

__all__ = ["PublishResult", "catalog", "metadata_manifest", "mirror_sync", "publish_metadata", "pull", "push"]

_log = logging.getLogger("sealift.publish")
_REFERRERS = re.compile(r"sha256-[0-9a-f]{64}")  # what refers to a bundle (its chunk deltas), carried with the bundle



@dataclass
class PublishResult:
    """What a push, pull or sync did."""

    destination: str
    bundles: list[dict[str, Any]] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    moved: Transferred = field(default_factory=Transferred)
    skipped: list[str] = field(default_factory=list)  # tags that are not bundles
    deltas: list[dict[str, Any]] = field(default_factory=list)  # chunk deltas made (push --base)

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "bundles": self.bundles, "metadata_published": self.metadata,
                "skipped_tags": self.skipped, "deltas": self.deltas, **self.moved.to_json()}


def push(bundle: Path, target: str, *, plain_http: bool, progress: Progress | None = None, require_signed: bool = False,
         warn: Callable[[str], None] = lambda _: None, mount_from: Sequence[str] = (), base: str | None = None) -> PublishResult:
    """Verify ``bundle``, then send what the registry lacks of it, and its signed metadata (see
    :func:`check_signed` for one that carries none); a blob another repository of the registry named in
    ``mount_from`` holds is linked from there, not sent. With ``base`` (an earlier release of the bundle, a
    path or a registry reference), its chunk delta against that base is pushed too and listed under it."""
    progress = progress or QuietProgress()
    progress.step(f"verify {bundle}")
    with open_artifact(bundle) as artifact, ExitStack() as stack:
        check_signed(artifact, require_signed=require_signed, warn=warn)
        if artifact.kind is Kind.OVERLAY:
            if base is not None:
                raise InputError(f"{bundle}: an overlay is small and travels whole; --base is for bundles")
            overlay = check_overlay(artifact)
            identity = {"name": overlay.name, "version": overlay.version, "site": overlay.site}
            default_tag, shown = overlay_tag(overlay.site, overlay.version), f"site {overlay.site}"
        else:
            info = verify_bundle(artifact, progress=progress.advance)
            identity = {"name": info.name, "version": info.version, "profile": info.profile}
            default_tag, shown = bundle_tag(info.profile, info.version), info.profile
        if parse_reference(target, what="registry").digest:
            raise InputError(f"registry {target}: push to a tag, not a digest (the digest is the bundle's own)")
        built, said = _make_delta(artifact, base, identity, stack, plain_http=plain_http, progress=progress) if base else (None, None)
        client = connect(target, plain_http=plain_http, what="registry")

        def delta_first() -> Transferred:  # listed before the metadata that makes the release visible to devices
            if built is None:
                return Transferred()
            progress.step(f"push its chunk delta ({built.moved} bytes for {built.whole})", total_bytes=built.moved)
            return push_delta(built, client, artifact.top.digest, advance=progress.advance)

        result = _push(artifact, client, tag=client.ref.tag or default_tag, identity=identity, shown=shown, progress=progress,
                       mount_from=mount_from, before_metadata=delta_first)
        result.deltas += [said] if said is not None else []
        return result


def _make_delta(artifact: Artifact, base: str, identity: dict[str, str], stack: ExitStack, *, plain_http: bool,
                progress: Progress) -> tuple[BuiltDelta | None, dict[str, Any]]:
    """The chunk delta of the bundle against ``base`` (of the same name and profile), made before anything is
    pushed (in a folder ``stack`` removes), and what to say of it."""
    old = open_base(base, plain_http=plain_http, stack=stack)
    if (old.name, old.profile) != (identity["name"], identity["profile"]):
        raise InputError(f"base {base}: {old.name} for {old.profile}, not {identity['name']} for {identity['profile']}")
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sealift-chunks-")))
    progress.step(f"cut the large blobs of {identity['name']} {identity['version']} against {old.version} into chunks")
    source = ReaderEndpoint(artifact.reader)
    layout = DirectoryEndpoint(work / "delta", what="chunk delta")
    layout.prepare()
    built = make_delta(walk(artifact.top, source), source, old, layout, work / "scratch", advance=progress.advance)
    said = {"digest": None, "blobs_rebuilt": 0, "bytes_rebuilt": 0, "bytes": 0} if built is None else built.to_json()
    return built, {"base": old.version, **said}


def _push(artifact: Artifact, client: RegistryClient, *, tag: str, identity: dict[str, str], shown: str,
          progress: Progress, mount_from: Sequence[str] = (), before_metadata: Callable[[], Transferred] = Transferred) -> PublishResult:
    result = PublishResult(destination=client.ref.name)
    reader, top = artifact.reader, artifact.top
    with _closing(client):
        source = ReaderEndpoint(reader)
        graph = walk(top, source)
        progress.step(f"push {identity['name']} {identity['version']} ({shown}) to {client.ref.name}:{tag}", total_bytes=graph.size)
        dest = RegistryEndpoint(client, mount_from=[parse_reference(f"{client.ref.host}/{r}", what="--mount-from").repository
                                                    for r in mount_from])
        result.moved = copy_graph(graph, source, dest, tag=tag, advance=progress.advance)
        result.moved.add(before_metadata())
        result.bundles.append({**identity, "digest": top.digest, "tag": tag})
        files = {name: _read_file(reader, name) for name in sorted(reader.metadata_names())}
        progress.step(f"publish {len(files)} metadata files")
        result.metadata = publish_metadata(client, files)
    return result


def check_signed(artifact: Artifact, *, require_signed: bool, warn: Callable[[str], None]) -> None:
    """An artifact that carries no signed metadata reaches no device (each refuses it): refused with
    ``require_signed``, else said through ``warn``."""
    if artifact.reader.metadata_names():
        return
    why = f"{artifact.path} carries no signed metadata (tuf/): every device will refuse it; sign it with `sealift repo add`"
    if require_signed:
        raise Refused(f"{why} (--require-signed)")
    warn(why)


def pull(reference: str, out: Path, *, plain_http: bool, progress: Progress | None = None) -> PublishResult:
    """Download a bundle and the signed metadata beside it into the layout directory ``out``.

    Blobs already in ``out`` (an earlier, interrupted pull) are kept; a half-written blob is
    resumed. ``index.json`` is written last, and the result is verified like any bundle.
    """
    progress = progress or QuietProgress()
    client = connect(reference, plain_http=plain_http, what="registry")
    if not (client.ref.tag or client.ref.digest):
        raise InputError(f"registry {reference}: name the bundle to pull with :TAG or @DIGEST")
    if (out / "index.json").exists():
        raise InputError(f"{out}: already holds a complete layout; pull into a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "oci-layout").is_file():
        raise InputError(f"{out}: not empty, and not a pull that was cut short; pull into a new directory")
    result = PublishResult(destination=str(out))
    with _closing(client):
        source = RegistryEndpoint(client)
        found = client.get_manifest(client.ref.digest or client.ref.tag or "")
        if found is None:
            raise DeliveryError(f"registry {reference}: no such bundle")
        body, media_type, digest = found
        top = bundle_descriptor(body, media_type, digest, str(client.ref))
        graph = walk(top, source)
        dest = DirectoryEndpoint(out)
        dest.prepare()
        progress.step(f"pull {client.ref} into {out}", total_bytes=graph.size)
        result.moved = copy_graph(graph, source, dest, advance=progress.advance)
        names = metadata_names(client)
        progress.step(f"fetch {len(names)} metadata files")
        dest.write_metadata({name: read_metadata(client, name) or b"" for name in names})
        dest.finish([top])
    progress.step(f"verify {out}")
    try:
        info = verify_bundle(out, progress=progress.advance)
    except SealiftError:
        (out / "index.json").unlink(missing_ok=True)  # never leave what looks like a complete bundle
        raise
    result.bundles.append({"name": info.name, "version": info.version, "profile": info.profile, "digest": info.digest})
    result.metadata = names
    return result


def mirror_sync(origin: str, target: str, *, profiles: tuple[str, ...] = (), sites: tuple[str, ...] = (),
                plain_http_from: bool = False, plain_http_to: bool = False, progress: Progress | None = None,
                warn: Callable[[str], None] = _log.warning) -> PublishResult:
    """Copy the bundles a site needs (all, or those of ``profiles``), its overlays (all, or those of
    ``sites``) and the metadata into another registry.

    ``origin`` is a repository, one tagged bundle in it, or a whole registry (``HOST[:PORT]``: every
    repository its catalog lists that holds bundles, each to the repository of the same name). A
    sync that finds nothing to copy (a filter that matches nothing, a source with no Sealift bundle)
    is an InputError naming what the source holds, never a success that copied nothing.
    """
    held: set[str] = set()
    if "/" not in origin.removeprefix("docker://"):
        if "/" in target:
            raise InputError(f"mirror {target}: syncing a whole registry needs a registry to sync into (HOST[:PORT])")
        result = PublishResult(destination=target)
        for repository in catalog(origin, plain_http=plain_http_from):
            one = _sync_repository(f"{origin}/{repository}", target, profiles=profiles, sites=sites, held=held,
                                   plain_http_from=plain_http_from, plain_http_to=plain_http_to, progress=progress, warn=warn)
            result.bundles += one.bundles
            result.metadata += [f"{repository}/{name}" for name in one.metadata]
            result.moved.add(one.moved)
            result.skipped += [f"{repository}:{tag}" for tag in one.skipped]
    else:
        result = _sync_repository(origin, target, profiles=profiles, sites=sites, held=held, plain_http_from=plain_http_from,
                                  plain_http_to=plain_http_to, progress=progress, warn=warn)
    if not result.bundles:
        asked = " and ".join(part for part in (f"profile {', '.join(profiles)}" if profiles else "",
                                               f"site {', '.join(sites)}" if sites else "") if part)
        holds = ", ".join(sorted(held)) or "no Sealift bundle or overlay"
        raise InputError(f"{origin}: nothing to sync" + (f" for {asked}" if asked else "") + f"; it holds {holds}")
    return result


def _sync_repository(origin: str, target: str, *, profiles: tuple[str, ...], sites: tuple[str, ...], held: set[str],
                     plain_http_from: bool, plain_http_to: bool, progress: Progress | None,
                     warn: Callable[[str], None]) -> PublishResult:
    """:func:`mirror_sync` of one repository (or one tag of it); what it holds goes into ``held``."""
    progress = progress or QuietProgress()
    src = connect(origin, plain_http=plain_http_from, what="source registry")
    dst_ref = parse_reference(target if "/" in target else f"{target}/{src.ref.repository}", what="mirror")
    if dst_ref.tag or dst_ref.digest:
        raise InputError(f"mirror {target}: name a repository (HOST[/REPO]), not a tag; tags are copied as they are")
    dst = RegistryClient(dst_ref, plain_http=plain_http_to, what=f"mirror {dst_ref.name}")
    result = PublishResult(destination=dst_ref.name)
    with _closing(src), _closing(dst):
        named = src.ref.digest or src.ref.tag
        tags = [named] if named else sorted(t for t in src.tags() if not t.startswith(METADATA_TAG_PREFIX) and not _REFERRERS.fullmatch(t))
        same_registry = src.ref.host == dst.ref.host  # its blobs are linked, not sent again
        source, dest = RegistryEndpoint(src), RegistryEndpoint(dst, mount_from=[src.ref.repository] if same_registry else [])
        for tag in tags:
            found = src.get_manifest(tag)
            if found is None:
                raise DeliveryError(f"source registry {src.ref.name}: {tag} vanished during the sync")
            try:
                top = bundle_descriptor(*found, f"{src.ref.name}:{tag}", kinds=(Kind.BUNDLE, Kind.OVERLAY))
            except Refused:
                if named:
                    raise
                result.skipped.append(tag)  # something else shares the repository: not ours to copy
                continue
            annotations = top.annotations
            overlay = kind(top.artifact_type) is Kind.OVERLAY
            held.add(f"site {annotations.get(ANNOTATION.SITE)}" if overlay else f"profile {annotations.get(ANNOTATION.PROFILE)}")
            if overlay:  # a site's overlay: sealed to that site's devices only
                if sites and annotations.get(ANNOTATION.SITE) not in sites:
                    continue
            elif profiles and annotations.get(ANNOTATION.PROFILE) not in profiles:
                continue
            graph = walk(top, source)
            progress.step(f"sync {tag} ({annotations.get(ANNOTATION.NAME)} {annotations.get(ANNOTATION.VERSION)})",
                          total_bytes=graph.size)
            copy_tag = None if src.ref.digest else tag
            if not overlay:  # its chunk deltas first: a large blob the mirror can rebuild from a base it holds is not copied whole
                try:
                    with tempfile.TemporaryDirectory(prefix="sealift-chunks-") as work:
                        result.moved.add(carry_deltas(src, dst, top, graph, Path(work), warn=warn,  # (rebuilt: present below)
                                                      same_registry=same_registry))
                except SealiftError as e:  # a shortcut that failed: the bundle still goes, whole
                    warn(f"{e.diagnostics()}; the chunk deltas of {tag} are not carried")
            result.moved.add(copy_graph(graph, source, dest, tag=copy_tag, advance=progress.advance))
            where = {"site": annotations.get(ANNOTATION.SITE)} if overlay else {
                "profile": annotations.get(ANNOTATION.PROFILE)}
            result.bundles.append({"tag": tag, "digest": top.digest, "name": annotations.get(ANNOTATION.NAME),
                                   "version": annotations.get(ANNOTATION.VERSION), **where})
        if not result.bundles:  # nothing of it for this mirror: its metadata stays out too
            return result
        names = [n for n in metadata_names(src) if not _same_tag(src, dst, metadata_tag(n))]
        progress.step(f"sync {len(names)} changed metadata files")
        files = {name: data for name in names if (data := read_metadata(src, name)) is not None}
        result.metadata = publish_metadata(dst, files)
    return result


def catalog(host: str, *, plain_http: bool) -> list[str]:
    """The repositories a registry lists (its ``/v2/_catalog``), following its pagination."""
    client = RegistryClient(Reference(host=host.removeprefix("docker://"), repository="_catalog"), plain_http=plain_http,
                            what=f"source registry {host}")
    with _closing(client):
        return client.catalog()


# --- signed metadata in a registry --------------------------------------------------------------


def publish_metadata(client: RegistryClient, files: dict[str, bytes]) -> list[str]:
    """Publish metadata files; return the names written.

    Versioned files (``3.snapshot.json``, ``2.root.json``) never change, so one already there is
    left alone; ``timestamp.json`` (and any other unversioned file) is replaced only by a newer
    version. Roots go first and the timestamp last, so readers never see a timestamp whose
    snapshot is not there yet.
    """
    written: list[str] = []
    for name in sorted(files, key=_publish_order):
        data = files[name]
        tag = metadata_tag(name)
        if name[0].isdigit():
            if client.has_manifest(tag):
                continue
        else:
            current = read_metadata(client, name)
            if current is not None and metadata_version(current) >= metadata_version(data):
                continue
        blob = Descriptor(media_type=MEDIA.TUF_METADATA, digest=_digest(data), size=len(data))
        for part, body in ((EMPTY_CONFIG, b"{}"), (blob, data)):
            if not client.has_blob(part.digest):
                upload_bytes(client, part, body)
        client.put_manifest(tag, metadata_manifest(name, blob), MEDIA.MANIFEST)
        written.append(name)
    return written


def _same_tag(src: RegistryClient, dst: RegistryClient, tag: str) -> bool:
    """Whether ``dst`` already has ``tag`` as ``src`` has it (asked with HEAD requests: nothing is downloaded)."""
    there = dst.manifest_digest(tag)
    return bool(there) and there == src.manifest_digest(tag)


def _publish_order(name: str) -> tuple[int, str]:
    parts = name.split(".")  # N.ROLE.json or ROLE.json; a delegated role's name may hold dots itself
    role = parts[1] if len(parts) == 3 and parts[0].isdigit() else parts[0] if len(parts) == 2 else ""
    return ({"root": 0, "timestamp": 3, "snapshot": 2}.get(role, 1), name)


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _read_file(reader: Any, name: str) -> bytes:
    with reader.open_metadata(name) as stream:
        data: bytes = stream.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise Refused(f"{reader.location}: tuf/{name} is larger than {MAX_METADATA_BYTES} bytes")
    return data


@contextmanager
def _closing(client: RegistryClient) -> Iterator[RegistryClient]:
    try:
        yield client
    finally:
        client.close()


def metadata_manifest(name: str, blob: Descriptor) -> bytes:
    """The OCI artifact manifest that carries one TUF metadata file in a registry."""
    layer = Descriptor(media_type=MEDIA.TUF_METADATA, digest=blob.digest, size=blob.size,
                       annotations={"org.opencontainers.image.title": name})
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA.MANIFEST,
        "artifactType": MEDIA.TUF_METADATA,
        "config": {**EMPTY_CONFIG.to_json(), "data": "e30="},
        "layers": [layer.to_json()],
        "annotations": {"dev.sealift.tuf.name": name},
    })
