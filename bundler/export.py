"""``sealift export``: bundles and site overlays written to removable media for sites that never connect.

The medium is described in :mod:`updater.medium`, which also reads and checks it. A delta holds
every manifest but only the blobs its base lacks, and a large blob that changed only in part as
a chunk delta against the base's blob in the same place (:mod:`bundler.deltas`); the device
rebuilds it from its own copy of the base. ``SHA256SUMS`` is written last, so a medium
copied halfway, or onto a stick that filled up, fails its check.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

from bundler.deltas import BaseBundle, make_delta, open_base
from bundler.metadata_io import metadata_version
from bundler.publish import check_signed
from updater.artifact import Artifact, Kind, open_artifact
from updater.bundle import verify_bundle
from updater.content import copy_hashed
from updater.errors import DeviceFault, InputError
from updater.layout import MEDIUM_FILE, NOTE_FILE, SUMS_FILE
from updater.medium import MEDIUM_FORMAT, MediumBundle, MediumContents, MediumOverlay, MediumReport
from updater.oci import ANNOTATION, MAX_JSON_BYTES, Descriptor
from updater.overlay import check_overlay
from updater.progress import Progress, QuietProgress
from updater.transfer import DirectoryEndpoint, Graph, ReaderEndpoint, copy_graph, walk
from updater.tuf_client import metadata_expiries

__all__ = ["export"]


def export(bundles: list[Path], to: Path, *, bases: tuple[str, ...] = (), plain_http: bool = False,
           progress: Progress | None = None, require_signed: bool = False, warn: Callable[[str], None] = lambda _: None) -> MediumReport:
    """Write ``bundles`` (full, or as deltas against ``bases``) and site overlays to the medium ``to``
    (a directory, or a ``.tar`` file); one that carries no signed metadata is said through ``warn``, or
    refused with ``require_signed``."""
    progress = progress or QuietProgress()
    as_tar = to.suffix == ".tar"
    if to.exists() and (as_tar or any(to.iterdir())):
        raise InputError(f"{to}: already exists; export to a new (or empty) directory or a new .tar file")
    for bundle in bundles:  # before anything is written
        with open_artifact(bundle) as artifact:
            check_signed(artifact, require_signed=require_signed, warn=warn)
    work = Path(tempfile.mkdtemp(prefix=f".{to.name}-", dir=to.parent)) if as_tar else to
    report = MediumReport(location=str(to))
    try:
        with ExitStack() as stack:
            base_bundles = [open_base(base, plain_http=plain_http, stack=stack) for base in bases]
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sealift-chunks-")))  # $TMPDIR, not the medium
            layout = DirectoryEndpoint(work)
            layout.prepare()
            metadata: dict[str, bytes] = {}
            used: set[int] = set()
            for bundle in bundles:
                progress.step(f"verify {bundle}")
                with open_artifact(bundle) as artifact:
                    if artifact.kind is Kind.OVERLAY:
                        report.overlays.append(_export_overlay(artifact, layout, report, progress))
                    else:
                        _export_bundle(artifact, layout, report, base_bundles, used, progress, scratch)
                    for name in artifact.reader.metadata_names():
                        with artifact.reader.open_metadata(name) as stream:
                            _merge_metadata(metadata, name, stream.read(MAX_JSON_BYTES + 1))
            if unused := [bases[i] for i in range(len(bases)) if i not in used]:
                raise InputError(f"base {unused[0]}: no exported bundle has its name and profile")
            layout.write_metadata(metadata)
            (work / MEDIUM_FILE).write_bytes(json.dumps({"mediumVersion": MEDIUM_FORMAT, "bundles": [b.to_json() for b in report.bundles],
                                                         "overlays": [o.to_json() for o in report.overlays]},
                                                        indent=2, sort_keys=True).encode())
            (work / NOTE_FILE).write_text(_note(report, metadata_expiries(set(metadata), metadata.__getitem__)))
            layout.finish([*(b.top for b in report.bundles), *(o.top for o in report.overlays)])
            _write_sums(work)
        if as_tar:
            progress.step(f"write {to}")
            _tar(work, to)
    except OSError as e:
        raise DeviceFault(f"{to}: cannot write the medium ({'the disk is full' if e.errno == 28 else e.strerror}); "
                          "what was written is incomplete and fails `sealift verify`") from e
    finally:
        if as_tar:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _export_bundle(artifact: Artifact, layout: DirectoryEndpoint, report: MediumReport, bases: list[BaseBundle], used: set[int],
                   progress: Progress, scratch: Path) -> None:
    info = verify_bundle(artifact, progress=progress.advance)
    source = ReaderEndpoint(artifact.reader)
    top = artifact.top
    top = Descriptor(media_type=top.media_type, digest=top.digest, size=top.size, artifact_type=top.artifact_type,
                     annotations={**top.annotations, ANNOTATION.NAME: info.name, ANNOTATION.VERSION: info.version,
                                  ANNOTATION.PROFILE: info.profile})
    graph = walk(top, source)
    found = next(((i, b) for i, b in enumerate(bases) if (b.name, b.profile) == (info.name, info.profile)), None)
    omitted, chunks = set(), None
    if found is not None:
        used.add(found[0])
        base = found[1]
        omitted = {d.digest for d in graph.blobs if d.digest in base.blobs}
        progress.step(f"cut the large blobs of {info.name} {info.version} against {base.version} into chunks")
        chunks = make_delta(graph, source, base, layout, scratch, advance=progress.advance)
        if chunks is not None:  # written into the medium: its index and pack blobs stand for the blobs it rebuilds
            omitted |= set(chunks.targets)
    part = Graph(top=top, manifests=graph.manifests, blobs=[d for d in graph.blobs if d.digest not in omitted])
    shown = f" as a delta against {found[1].version}" if found else ""
    progress.step(f"write {info.name} {info.version} ({info.profile}){shown}", total_bytes=part.size)
    report.moved.add(copy_graph(part, source, layout, advance=progress.advance))
    if chunks is not None:
        report.moved.blobs_sent += 2 * len(chunks.targets)  # an index and a pack each
        report.moved.bytes_sent += chunks.moved
    report.bundles.append(MediumBundle(
        name=info.name, version=info.version, profile=info.profile, top=top,
        blobs_from_base=sum(1 for d in graph.blobs if not layout.has_blob(d.digest)),
        base={"version": found[1].version, "digest": found[1].graph.top.digest} if found else None,
        chunks=chunks.manifest if chunks else None))


def _export_overlay(artifact: Artifact, layout: DirectoryEndpoint, report: MediumReport, progress: Progress) -> MediumOverlay:
    info = check_overlay(artifact)
    if any(o.name == info.name and o.site == info.site for o in report.overlays):
        raise InputError(f"{artifact.path}: a second overlay of {info.name} for site {info.site}; a medium carries one per "
                         "application and site")
    source = ReaderEndpoint(artifact.reader)
    graph = walk(artifact.top, source)
    progress.step(f"write overlay {info.name} {info.version} for site {info.site}", total_bytes=graph.size)
    report.moved.add(copy_graph(graph, source, layout, advance=progress.advance))
    return MediumOverlay(name=info.name, site=info.site, version=info.version, top=artifact.top, fits=info.fits)


def _merge_metadata(into: dict[str, bytes], name: str, data: bytes) -> None:
    """Versioned files are the same everywhere; of two unversioned ones (timestamp.json) keep the newer."""
    if name in into and not name[0].isdigit() and metadata_version(into[name]) >= metadata_version(data):
        return
    into[name] = data


def _note(contents: MediumContents, expires: dict[str, str]) -> str:
    lines = ["Sealift update medium", "", "This medium carries signed update bundles for edge devices:", ""]
    for b in contents.bundles:
        kind = f"delta: needs {b.name} {b.base['version']} already installed" if b.base else "complete"
        lines.append(f"  {b.name} {b.version} for {b.profile} ({kind})")
    for o in contents.overlays:
        lines.append(f"  {o.name} overlay {o.version} for site {o.site} (its configuration, and secrets only its devices can open)")
    if expires:
        role, when = min(expires.items(), key=lambda item: item[1])
        lines += ["", f"Its signed metadata expires on {when} ({role}): a device refuses it after that.",
                  "Plug it in before then, or bring a new medium (at the office: sealift repo refresh, then export again)."]
    lines += ["", "Before it travels, check it: sealift verify THIS-MEDIUM",
              "At the site, plug it into the device, or copy it into the updater's watched directory;",
              "the updater verifies it again before it changes anything.",
              "Files: index.json, oci-layout and blobs/ (the OCI layout), tuf/ (signed metadata),",
              f"{MEDIUM_FILE} (what this holds), {SUMS_FILE} (a checksum of every file).", ""]
    return "\n".join(lines)


def _files(root: Path) -> Iterator[str]:
    for directory, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            relative = os.path.relpath(os.path.join(directory, name), root)
            if relative != SUMS_FILE:
                yield relative


def _write_sums(root: Path) -> None:
    lines = []
    for relative in _files(root):
        with open(root / relative, "rb") as f:
            digest, _ = copy_hashed(f, None)
        lines.append(f"{digest.removeprefix('sha256:')}  {relative}\n")
    temp = root / f".{SUMS_FILE}.tmp"
    with open(temp, "w") as out:
        out.writelines(lines)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temp, root / SUMS_FILE)


def _tar(work: Path, to: Path) -> None:
    temp = to.with_name(f".{to.name}.partial")
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            for relative in [MEDIUM_FILE, *(f for f in _files(work) if f != MEDIUM_FILE), SUMS_FILE]:
                info = tar.gettarinfo(str(work / relative), arcname=relative)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(work / relative, "rb") as member:
                    tar.addfile(info, member)
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.rename(temp, to)
    finally:
        temp.unlink(missing_ok=True)


