"""Physical media for sites that never connect: ``sealift export`` and the check of a medium.

A medium is one OCI layout (a directory, or the same as a tar file) holding one or more bundles
and site overlays (``index.json`` names each one's top index), the signed metadata in ``tuf/``,
``sealift-medium.json`` (what it holds, and for a delta which base each bundle needs),
``README.txt`` for the site operator, and ``SHA256SUMS`` over every other file, written last.
A delta holds every manifest but only the blobs its base lacks; a device that has the base
takes the rest from its own store. A device takes the newest bundle for its profile and the
newest overlay for its site; a medium holding only an overlay rotates a site's secrets.

A medium copied halfway, or onto a stick that filled up, fails its check: a file listed in
``SHA256SUMS`` is missing or differs, or ``SHA256SUMS`` itself is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.bundle import ANNOTATION, verify_bundle
from bundler.errors import BundleError, DeliveryError, OutputError, SealiftError
from bundler.layout import (
    CHUNK,
    MAX_JSON_BYTES,
    MEDIUM_FILE,
    METADATA_NAME,
    NOTE_FILE,
    SUMS_FILE,
    Descriptor,
    LayoutReader,
    copy_hashed,
    open_layout,
)
from bundler.overlay import check_overlay, fits, is_overlay
from bundler.progress import Progress, QuietProgress
from bundler.publish import connect, metadata_version
from bundler.spec import version_key
from bundler.transfer import Graph, LayoutStore, ReaderStore, RegistryStore, Store, Transferred, copy_graph, walk

__all__ = ["MEDIUM_FILE", "MediumBundle", "MediumContents", "MediumOverlay", "MediumReport", "check_medium", "export",
           "looks_like_medium", "read_medium"]

FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class MediumBundle:
    """One bundle on a medium; ``base`` (name, version, digest) is set when it is a delta."""

    name: str
    version: str
    profile: str
    top: Descriptor
    base: dict[str, str] | None = None
    blobs_from_base: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "profile": self.profile, "digest": self.top.digest,
                "base": self.base, "blobs_from_base": self.blobs_from_base}


@dataclass(frozen=True, kw_only=True)
class MediumOverlay:
    """One site overlay on a medium (always complete: overlays are small)."""

    name: str
    site: str
    version: str
    top: Descriptor
    fits: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "site": self.site, "version": self.version, "fits": self.fits, "digest": self.top.digest}


@dataclass
class MediumContents:
    """What ``sealift-medium.json`` says a medium holds."""

    bundles: list[MediumBundle] = field(default_factory=list)
    overlays: list[MediumOverlay] = field(default_factory=list)


@dataclass
class MediumReport(MediumContents):
    """What a medium holds, and every problem found with it."""

    location: str = ""
    problems: list[str] = field(default_factory=list)
    moved: Transferred = field(default_factory=Transferred)

    def to_json(self) -> dict[str, Any]:
        return {"medium": self.location, "bundles": [b.to_json() for b in self.bundles],
                "overlays": [o.to_json() for o in self.overlays], "problems": self.problems, "ok": not self.problems}


def looks_like_medium(path: Path) -> bool:
    """Whether ``path`` claims to be a medium (a directory or tar with ``sealift-medium.json``;
    a tar medium starts with it, so even a truncated one is recognised)."""
    if path.is_dir():
        return (path / MEDIUM_FILE).is_file()
    try:
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            return first is not None and first.name == MEDIUM_FILE
    except (tarfile.TarError, OSError):
        return False


# --- writing ----------------------------------------------------------------------------------


def export(bundles: list[Path], to: Path, *, bases: tuple[str, ...] = (), plain_http: bool = False,
           progress: Progress | None = None) -> MediumReport:
    """Write ``bundles`` (full, or as deltas against ``bases``) and site overlays to the medium ``to``
    (a directory, or a ``.tar`` file)."""
    progress = progress or QuietProgress()
    as_tar = to.suffix == ".tar"
    if to.exists() and (as_tar or any(to.iterdir())):
        raise OutputError(f"{to}: already exists; export to a new (or empty) directory or a new .tar file")
    work = Path(tempfile.mkdtemp(prefix=f".{to.name}-", dir=to.parent)) if as_tar else to
    report = MediumReport(location=str(to))
    try:
        with ExitStack() as stack:
            base_blobs = [_base_blobs(base, plain_http, stack) for base in bases]
            layout = LayoutStore(work)
            layout.prepare()
            metadata: dict[str, bytes] = {}
            used: set[int] = set()
            for bundle in bundles:
                progress.step(f"verify {bundle}")
                if is_overlay(bundle):
                    report.overlays.append(_export_overlay(bundle, layout, report, progress))
                else:
                    _export_bundle(bundle, layout, report, base_blobs, used, stack, progress)
                with open_layout(bundle) as reader:
                    for name in reader.metadata_names():
                        with reader.open_metadata(name) as stream:
                            _merge_metadata(metadata, name, stream.read(MAX_JSON_BYTES + 1))
            if unused := [bases[i] for i in range(len(bases)) if i not in used]:
                raise DeliveryError(f"base {unused[0]}: no exported bundle has its name and profile")
            layout.write_metadata(metadata)
            (work / MEDIUM_FILE).write_bytes(json.dumps({"mediumVersion": FORMAT, "bundles": [b.to_json() for b in report.bundles],
                                                         "overlays": [o.to_json() for o in report.overlays]},
                                                        indent=2, sort_keys=True).encode())
            (work / NOTE_FILE).write_text(_note(report))
            layout.finish([*(b.top for b in report.bundles), *(o.top for o in report.overlays)])
            _write_sums(work)
        if as_tar:
            progress.step(f"write {to}")
            _tar(work, to)
    except OSError as e:
        raise OutputError(f"{to}: cannot write the medium ({'the disk is full' if e.errno == 28 else e.strerror}); "
                          "what was written is incomplete and fails `sealift verify`") from e
    finally:
        if as_tar:
            shutil.rmtree(work, ignore_errors=True)
    return report


Base = tuple[str, str, str, set[str], str]


def _export_bundle(bundle: Path, layout: LayoutStore, report: MediumReport, base_blobs: list[Base], used: set[int],
                   stack: ExitStack, progress: Progress) -> None:
    info = verify_bundle(bundle, progress=progress.advance)
    reader = stack.enter_context(open_layout(bundle))
    source = ReaderStore(reader)
    top = Descriptor.from_json(json.loads(reader.read_small("index.json"))["manifests"][0], where=str(bundle))
    top = Descriptor(media_type=top.media_type, digest=top.digest, size=top.size, artifact_type=top.artifact_type,
                     annotations={**top.annotations, ANNOTATION.NAME: info.name, ANNOTATION.VERSION: info.version,
                                  ANNOTATION.PROFILE: info.profile})
    graph = walk(top, source)
    base = next(((i, b) for i, b in enumerate(base_blobs) if (b[0], b[1]) == (info.name, info.profile)), None)
    omitted = {d.digest for d in graph.blobs if base and d.digest in base[1][3]}
    if base is not None:
        used.add(base[0])
    part = Graph(top=top, manifests=graph.manifests, blobs=[d for d in graph.blobs if d.digest not in omitted])
    progress.step(f"write {info.name} {info.version} ({info.profile})" + (f" as a delta against {base[1][2]}" if base else ""),
                  total_bytes=part.size)
    report.moved.add(copy_graph(part, source, layout, advance=progress.advance))
    report.bundles.append(MediumBundle(
        name=info.name, version=info.version, profile=info.profile, top=top, blobs_from_base=len(omitted),
        base={"version": base[1][2], "digest": base[1][4]} if base else None))


def _export_overlay(path: Path, layout: LayoutStore, report: MediumReport, progress: Progress) -> MediumOverlay:
    info = check_overlay(path)
    if any(o.name == info.name and o.site == info.site for o in report.overlays):
        raise DeliveryError(f"{path}: a second overlay of {info.name} for site {info.site}; a medium carries one per application and site")
    with open_layout(path) as reader:
        source = ReaderStore(reader)
        top = Descriptor.from_json(json.loads(reader.read_small("index.json"))["manifests"][0], where=str(path))
        graph = walk(top, source)
        progress.step(f"write overlay {info.name} {info.version} for site {info.site}", total_bytes=graph.size)
        report.moved.add(copy_graph(graph, source, layout, advance=progress.advance))
    return MediumOverlay(name=info.name, site=info.site, version=info.version, top=top, fits=info.fits)


def _base_blobs(base: str, plain_http: bool, stack: ExitStack) -> Base:
    """(name, profile, version, blob digests, index digest) of a base given as a path or a registry reference."""
    path = Path(base)
    store: Store
    if path.exists():
        reader = stack.enter_context(open_layout(path))
        store = ReaderStore(reader)
        top = Descriptor.from_json(json.loads(reader.read_small("index.json"))["manifests"][0], where=base)
        body = store.read_manifest(top.digest)
    else:
        client = connect(base, plain_http=plain_http, what="base")
        stack.callback(client.close)
        found = client.get_manifest(client.ref.digest or client.ref.tag or "latest")
        if found is None:
            raise DeliveryError(f"base {base}: neither a bundle on disk nor a bundle in the registry")
        body, media_type, digest = found
        top = Descriptor(media_type=media_type, digest=digest, size=len(body))
        store = RegistryStore(client)
    try:
        annotations = json.loads(body)["annotations"]
        identity = (annotations[ANNOTATION.NAME], annotations[ANNOTATION.PROFILE], annotations[ANNOTATION.VERSION])
    except (ValueError, KeyError, TypeError) as e:
        raise DeliveryError(f"base {base}: not a Sealift bundle") from e
    graph = walk(top, store)
    return (*identity, {d.digest for d in graph.blobs}, top.digest)


def _merge_metadata(into: dict[str, bytes], name: str, data: bytes) -> None:
    """Versioned files are the same everywhere; of two unversioned ones (timestamp.json) keep the newer."""
    if name in into and not name[0].isdigit() and metadata_version(into[name]) >= metadata_version(data):
        return
    into[name] = data


def _note(contents: MediumContents) -> str:
    lines = ["Sealift update medium", "", "This medium carries signed update bundles for edge devices:", ""]
    for b in contents.bundles:
        kind = f"delta: needs {b.name} {b.base['version']} already installed" if b.base else "complete"
        lines.append(f"  {b.name} {b.version} for {b.profile} ({kind})")
    for o in contents.overlays:
        lines.append(f"  {o.name} overlay {o.version} for site {o.site} (its configuration, and secrets only its devices can open)")
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


# --- reading ----------------------------------------------------------------------------------


def read_medium(reader: LayoutReader) -> MediumContents:
    """The bundles and overlays a medium says it holds."""
    where = f"{reader.location}: {MEDIUM_FILE}"
    contents = MediumContents()
    try:
        data = json.loads(reader.read_small(MEDIUM_FILE))
        if data.get("mediumVersion") != FORMAT:
            raise DeliveryError(f"{where}: medium format {data.get('mediumVersion')!r}, this Sealift reads {FORMAT}")
        index = json.loads(reader.read_small("index.json"))
        tops = {d.digest: d for d in (Descriptor.from_json(m, where=f"{reader.location}: index.json") for m in index["manifests"])}
        for entry in data["bundles"]:
            base = entry.get("base")
            if base is not None and not (isinstance(base, dict) and isinstance(base.get("version"), str)
                                         and _HEX.fullmatch(str(base.get("digest", "")).removeprefix("sha256:"))
                                         and str(base["digest"]).startswith("sha256:")):
                raise DeliveryError(f"{where}: malformed base of {entry.get('name')!r}")
            contents.bundles.append(MediumBundle(
                name=str(entry["name"]), version=str(entry["version"]), profile=str(entry["profile"]), top=tops[entry["digest"]],
                base=base, blobs_from_base=int(entry.get("blobs_from_base", 0))))
        for entry in data.get("overlays") or []:
            contents.overlays.append(MediumOverlay(name=str(entry["name"]), site=str(entry["site"]), version=str(entry["version"]),
                                                   top=tops[entry["digest"]], fits=str(entry.get("fits", ""))))
        for bundle in contents.bundles:
            version_key(bundle.version)
        for overlay in contents.overlays:
            version_key(overlay.version)
            fits(overlay.fits, overlay.version)  # a malformed range is refused here, not when a device compares it
    except (ValueError, KeyError, TypeError, AttributeError, SealiftError) as e:
        detail = e.diagnostics() if isinstance(e, SealiftError) else f"{type(e).__name__}: {e}"
        raise DeliveryError(f"{where}: malformed ({detail})") from e
    return contents


def check_medium(path: Path, *, progress: Progress | None = None) -> MediumReport:
    """Check a medium end to end: every file against ``SHA256SUMS``, every blob against its own digest
    and listed there, every bundle's and overlay's graph complete (a delta may lack only blobs, and
    says which base supplies them)."""
    progress = progress or QuietProgress()
    report = MediumReport(location=str(path))
    with open_layout(path, strict=False) as reader:
        contents = read_medium(reader)
        report.bundles, report.overlays = contents.bundles, contents.overlays
        report.problems += _check_sums(reader, path, progress)
        store = ReaderStore(reader)
        for bundle in report.bundles:
            try:
                graph = walk(bundle.top, store)
            except (DeliveryError, BundleError) as e:
                report.problems.append(f"{bundle.name} {bundle.version} ({bundle.profile}): {e}")
                continue
            missing = [d.digest for d in graph.blobs if not store.has_blob(d.digest)]
            if missing and bundle.base is None:
                report.problems.append(f"{bundle.name} {bundle.version} ({bundle.profile}): blob {missing[0]} is missing "
                                       f"({len(missing)} in all) and the bundle is not a delta")
            elif len(missing) != bundle.blobs_from_base and bundle.base is not None:
                report.problems.append(f"{bundle.name} {bundle.version} ({bundle.profile}): {len(missing)} blobs are missing, "
                                       f"the delta takes {bundle.blobs_from_base} from its base")
        for overlay in report.overlays:
            what = f"{overlay.name} overlay {overlay.version} (site {overlay.site})"
            try:
                graph = walk(overlay.top, store)
            except (DeliveryError, BundleError) as e:
                report.problems.append(f"{what}: {e}")
                continue
            if missing := [d.digest for d in graph.blobs if not store.has_blob(d.digest)]:
                report.problems.append(f"{what}: blob {missing[0]} is missing ({len(missing)} in all)")
    return report


def _check_sums(reader: LayoutReader, path: Path, progress: Progress) -> list[str]:
    """Every file ``SHA256SUMS`` lists is there with that hash, every blob's hash is its name, and
    every blob is listed. Only the names a medium holds are read: a listing cannot lead elsewhere."""
    try:
        listing = reader.read_small(SUMS_FILE).decode()
    except (BundleError, UnicodeDecodeError):
        return [f"{SUMS_FILE} is missing or unreadable: the medium was not written completely (or copied halfway)"]
    expected: dict[str, str] = {}
    for line in listing.splitlines():
        digest, _, name = line.partition("  ")
        if not _HEX.fullmatch(digest) or not _medium_name(name):
            return [f"{SUMS_FILE}: malformed line {line[:80]!r}"]
        expected[name] = digest
    problems = []
    progress.step(f"check {len(expected)} files of {path}")
    for name, digest in sorted(expected.items()):
        actual = _file_digest(reader, name)
        if actual is None:
            problems.append(f"{name} is missing (copied halfway?)")
        elif actual != digest:
            problems.append(f"{name} does not match {SUMS_FILE} (truncated or altered)")
        elif name.startswith("blobs/sha256/") and actual != name.removeprefix("blobs/sha256/"):
            problems.append(f"{name} does not match its digest (altered)")
    unlisted = sorted(f"blobs/sha256/{d.removeprefix('sha256:')}" for d in reader.blob_names())
    problems += [f"{name} is not listed in {SUMS_FILE}" for name in unlisted if name not in expected]
    return problems


_HEX = re.compile(r"[0-9a-f]{64}")


def _medium_name(name: str) -> bool:
    """The names a medium may hold (and so the only ones ``SHA256SUMS`` may name)."""
    if name in ("oci-layout", "index.json", MEDIUM_FILE, NOTE_FILE):
        return True
    if name.startswith("blobs/sha256/"):
        return bool(_HEX.fullmatch(name.removeprefix("blobs/sha256/")))
    if name.startswith("tuf/"):
        return bool(METADATA_NAME.fullmatch(name.removeprefix("tuf/")))
    return False


def _file_digest(reader: LayoutReader, name: str) -> str | None:
    try:
        with _open_member(reader, name) as stream:
            sha = hashlib.sha256()
            while chunk := stream.read(CHUNK):
                sha.update(chunk)
    except (BundleError, OSError):
        return None
    return sha.hexdigest()


@contextmanager
def _open_member(reader: LayoutReader, name: str) -> Iterator[Any]:
    if name.startswith("blobs/sha256/"):
        with reader.open_blob("sha256:" + name.removeprefix("blobs/sha256/")) as stream:
            yield stream
    elif name.startswith("tuf/") and METADATA_NAME.fullmatch(name.removeprefix("tuf/")):
        with reader.open_metadata(name.removeprefix("tuf/")) as stream:
            yield stream
    else:
        import io

        yield io.BytesIO(reader.read_small(name))

