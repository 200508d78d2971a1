"""Physical media for sites that never connect: what a medium holds, and its check (``sealift export`` writes one).

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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from updater.artifact import Artifact, Kind, open_artifact
from updater.errors import DeliveryError, Refused, SealiftError
from updater.layout import MEDIUM_FILE, NOTE_FILE, SUMS_FILE, LayoutReader
from updater.oci import ANNOTATION, CHUNK, METADATA_NAME, Descriptor, json_object
from updater.progress import Progress, QuietProgress
from updater.transfer import Graph, ReaderEndpoint, Transferred, walk
from updater.versions import fits, version_key

__all__ = [
    "MEDIUM_FORMAT",
    "MediumBundle",
    "MediumContents",
    "MediumOverlay",
    "MediumReport",
    "check_medium",
    "read_medium",
]

MEDIUM_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class MediumBundle:
    """One bundle on a medium; ``base`` (name, version, digest) is set when it is a delta, and ``chunks``
    (a chunk delta's manifest, see :mod:`updater.deltas`) when some of its blobs are rebuilt from the
    base's (they count among ``blobs_from_base``)."""

    name: str
    version: str
    profile: str
    top: Descriptor
    base: dict[str, str] | None = None
    blobs_from_base: int = 0
    chunks: Descriptor | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "profile": self.profile, "digest": self.top.digest,
                "base": self.base, "blobs_from_base": self.blobs_from_base,
                **({"chunks": self.chunks.to_json()} if self.chunks else {})}


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


def read_medium(reader: LayoutReader, entries: tuple[Descriptor, ...]) -> MediumContents:
    """The bundles and overlays a medium says it holds (``entries``: its ``index.json``'s)."""
    where = f"{reader.location}: {MEDIUM_FILE}"
    contents = MediumContents()
    try:
        data = json_object(reader.read_small(MEDIUM_FILE), "JSON")
        if data.get("mediumVersion") != MEDIUM_FORMAT:
            raise Refused(f"{where}: medium format {data.get('mediumVersion')!r}, this Sealift reads {MEDIUM_FORMAT}")
        tops = {d.digest: d for d in entries}
        for entry in data["bundles"]:
            base = entry.get("base")
            if base is not None and not (isinstance(base, dict) and isinstance(base.get("version"), str)
                                         and _HEX.fullmatch(str(base.get("digest", "")).removeprefix("sha256:"))
                                         and str(base["digest"]).startswith("sha256:")):
                raise Refused(f"{where}: malformed base of {entry.get('name')!r}")
            contents.bundles.append(MediumBundle(
                name=str(entry["name"]), version=str(entry["version"]), profile=str(entry["profile"]), top=tops[entry["digest"]],
                base=base, blobs_from_base=int(entry.get("blobs_from_base", 0)),
                chunks=Descriptor.from_json(entry["chunks"], where=where) if entry.get("chunks") is not None else None))
        for entry in data.get("overlays") or []:
            contents.overlays.append(MediumOverlay(name=str(entry["name"]), site=str(entry["site"]), version=str(entry["version"]),
                                                   top=tops[entry["digest"]], fits=str(entry.get("fits", ""))))
        for bundle in contents.bundles:
            version_key(bundle.version)
        for overlay in contents.overlays:
            version_key(overlay.version)
            fits(overlay.fits, overlay.version)  # a malformed range is refused here, not when a device compares it
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, SealiftError) as e:
        detail = e.diagnostics() if isinstance(e, SealiftError) else f"{type(e).__name__}: {e}"
        raise Refused(f"{where}: malformed ({detail})") from e
    return contents


def check_medium(source: Path | Artifact, *, progress: Progress | None = None) -> MediumReport:
    """Check a medium end to end: every file against ``SHA256SUMS``, every blob against its own digest
    and listed there, every bundle's and overlay's graph complete (a delta may lack only blobs, and
    says which base supplies them)."""
    if isinstance(source, Path):
        with open_artifact(source) as artifact:
            return check_medium(artifact, progress=progress)
    if source.kind is not Kind.MEDIUM:
        raise Refused(f"{source.path}: a Sealift {source.kind}, not a medium ({MEDIUM_FILE} is missing)")
    path, reader = source.path, source.reader
    progress = progress or QuietProgress()
    report = MediumReport(location=str(path))
    contents = read_medium(reader, source.tops)
    report.bundles, report.overlays = contents.bundles, contents.overlays
    report.problems += _check_sums(reader, path, progress)
    store = ReaderEndpoint(reader)
    for bundle in report.bundles:
        what = f"{bundle.name} {bundle.version} ({bundle.profile})"
        listed = {ANNOTATION.NAME: bundle.name, ANNOTATION.VERSION: bundle.version, ANNOTATION.PROFILE: bundle.profile}
        if (missing := _missing(store, bundle.top, what, listed, report.problems)) is None:
            continue
        if bundle.chunks is not None and bundle.base is None:
            report.problems.append(f"{what}: carries a chunk delta but is not a delta")
        if bundle.chunks is not None and (lacking := _missing_parts(store, bundle.chunks, what, report.problems)):
            report.problems.append(f"{what}: blob {lacking[0]} of its chunk delta is missing ({len(lacking)} in all)")
        if missing and bundle.base is None:
            report.problems.append(f"{what}: blob {missing[0]} is missing ({len(missing)} in all) and the bundle is not a delta")
        elif len(missing) != bundle.blobs_from_base and bundle.base is not None:
            report.problems.append(f"{what}: {len(missing)} blobs are missing, the delta takes {bundle.blobs_from_base} from its base")
    for overlay in report.overlays:
        what = f"{overlay.name} overlay {overlay.version} (site {overlay.site})"
        listed = {ANNOTATION.NAME: overlay.name, ANNOTATION.VERSION: overlay.version, ANNOTATION.SITE: overlay.site}
        if missing := _missing(store, overlay.top, what, listed, report.problems):
            report.problems.append(f"{what}: blob {missing[0]} is missing ({len(missing)} in all)")
    return report


def _missing(store: ReaderEndpoint, top: Descriptor, what: str, listed: dict[str, str], problems: list[str]) -> list[str] | None:
    """The blobs below ``top`` the medium lacks, once the graph is walked and what the listing says of it
    is checked (``problems`` told of each fault); None when the graph cannot be walked."""
    try:
        graph = walk(top, store)
    except (DeliveryError, Refused) as e:
        problems.append(f"{what}: {e}")
        return None
    if why := _listed_as_signed(graph, listed):
        problems.append(f"{what}: {why}")
    return [d.digest for d in graph.blobs if not store.has_blob(d.digest)]


def _missing_parts(store: ReaderEndpoint, top: Descriptor, what: str, problems: list[str]) -> list[str]:
    """The blobs below ``top`` (a chunk delta's manifest) the medium lacks."""
    try:
        graph = walk(top, store)
    except (DeliveryError, Refused) as e:
        problems.append(f"{what}: its chunk delta: {e}")
        return []
    return [d.digest for d in graph.blobs if not store.has_blob(d.digest)]


def _listed_as_signed(graph: Graph, listed: dict[str, str]) -> str | None:
    """Why the medium's listing (outside every signed digest) disagrees with the top index it names
    (whose annotations its digest covers); None when it agrees."""
    top = json_object(next(body for d, body in graph.manifests if d.digest == graph.top.digest), "top index")
    found = top.get("annotations")
    annotations: dict[str, Any] = found if isinstance(found, dict) else {}
    wrong = sorted(key for key, value in listed.items() if annotations.get(key) != value)
    if wrong:
        return f"{MEDIUM_FILE} says {wrong[0]} is {listed[wrong[0]]!r}, its index says {annotations.get(wrong[0])!r}"
    return None


def _check_sums(reader: LayoutReader, path: Path, progress: Progress) -> list[str]:
    """Every file ``SHA256SUMS`` lists is there with that hash, every blob's hash is its name, and
    every blob is listed. Only the names a medium holds are read: a listing cannot lead elsewhere."""
    try:
        listing = reader.read_small(SUMS_FILE).decode()
    except (Refused, UnicodeDecodeError):
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
    except (Refused, OSError):
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

