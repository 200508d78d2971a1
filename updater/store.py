"""The device's bundle store: the bundles of the releases it keeps, as OCI layouts, by index digest.

``STATE/bundles/HEX`` is a complete bundle (``index.json`` written last); ``.incoming-HEX`` is
one being assembled, kept across interruptions so a download resumes where it stopped. Every
bundle a device installs passes through here, wherever it came from (a path, a medium, a
registry): a blob another kept bundle already has is hard-linked, not fetched again, a delta
medium finds its base here, and a large blob that changed in part is rebuilt here from the kept
blob it changed from and its chunk delta (:mod:`updater.deltas`). Every blob is hashed as it
arrives or is rebuilt, once: nothing else is ever written here, so the installer then verifies
the assembled bundle (TUF, its structure, every blob's presence and size, the profile) without
hashing its blobs again. Bundles no kept release
needs are removed after each install.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

from updater.artifact import Artifact, Kind
from updater.deltas import BASE_DIGEST, LARGE, PACKS, read_deltas, take_all
from updater.durable import fsync_dir
from updater.errors import Conflict, DeliveryError, DeviceFault, EngineFault, Refused, SealiftError
from updater.locks import file_lock, remove_lock
from updater.medium import read_medium
from updater.oci import MAX_JSON_BYTES, Descriptor, check_digest
from updater.transfer import DirectoryEndpoint, Endpoint, ReaderEndpoint, Transferred, copy_graph, walk

__all__ = ["BundleStore", "Incoming"]

_log = logging.getLogger("sealift.store")

_INCOMING = ".incoming-"
_LOCKS = ".locks"
_HEX = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_DELTAS = 4  # chunk deltas read for one bundle, of those on a base it keeps
_INCOMING_KEPT_S = 24 * 3600  # an unfinished download untouched this long is given up


class Incoming:
    """A bundle being assembled in the store, under a lock of its own (one writer per bundle);
    ``complete`` makes it a bundle. Use it as a context manager: one that ends in an error is
    removed, unless it is ``resumable`` (a download) and the error neither refuses its content nor is
    the device's (a full disk): an outage, a busy updater or an engine that does not answer leave it
    to resume."""

    def __init__(self, store: BundleStore, top: Descriptor, *, resumable: bool) -> None:
        self.store = store
        self.top = top
        self.resumable = resumable
        self.layout = DirectoryEndpoint(store.root / f"{_INCOMING}{_hex(top.digest)}", what=f"store {_hex(top.digest)[:12]}")
        self.metadata: dict[str, bytes] = {}
        self.moved = Transferred()
        self.passed_over: list[SealiftError] = []  # why :meth:`missing` could not use a chunk delta
        self._lock = ExitStack()

    def __enter__(self) -> Incoming:
        self._lock.enter_context(file_lock(self.store.lock_path(self.top.digest), wait=True))
        try:
            self.layout.prepare()
        except BaseException as e:
            self.__exit__(type(e), e, None)  # it will not run otherwise: remove what was made, let go of the lock
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        try:
            if error is not None and not (self.resumable and isinstance(error, DeliveryError | Conflict | EngineFault)):
                shutil.rmtree(self.layout.root, ignore_errors=True)  # refused, the device's fault, or a bug: keep nothing
        finally:
            self._lock.close()

    def fill(self, source: Endpoint, *, deltas: Iterable[Descriptor] = (), warn: Callable[[str], None] = _log.warning,
             advance: Callable[[int], None] = lambda _: None) -> None:
        """Take every blob of the bundle: from kept bundles (hard links), rebuilt from a kept base and one
        of the chunk ``deltas`` (their manifests, in ``source``), or from ``source`` whole (a delta passed
        over is said through ``warn``)."""
        graph = walk(self.top, source)
        for blob in [*graph.blobs, *(manifest for manifest, _ in graph.manifests)]:
            if not self.layout.has_blob(blob.digest):
                self._adopt(blob)
        graph.blobs = [b for b in graph.blobs if not self.layout.has_blob(b.digest)]
        wanted = {b.digest: b for b in graph.blobs if b.size >= LARGE}
        deltas = self.usable(deltas)
        if wanted and deltas:
            passed: list[SealiftError] = []
            found = read_deltas(source, deltas, wanted, warn=passed.append, has_base=self._has_blob)
            self.moved.add(take_all(found, graph.blobs, source, self.layout, self.store.find_blob, warn=passed.append,
                                    advance=advance))
            for why in passed:
                warn(f"{why.diagnostics()}; fetching the whole blob instead")
            graph.blobs = [b for b in graph.blobs if not self.layout.has_blob(b.digest)]
            if passed and (lacking := [b for b in graph.blobs if b.digest in wanted and not source.has_blob(b.digest)]):
                raise type(passed[0])(f"blob {lacking[0].digest} of {_identity(self.top)} is there only as a chunk delta, which "
                                      f"could not be used: {passed[0].diagnostics()}")
        self.moved.add(copy_graph(graph, source, self.layout, advance=advance))

    def usable(self, deltas: Iterable[Descriptor]) -> list[Descriptor]:
        """The chunk deltas whose base bundle this device keeps (a few at most: a list is not trusted)."""
        kept = [d for d in deltas if _DIGEST.fullmatch(d.annotations.get(BASE_DIGEST, "")) and self.store.has(d.annotations[BASE_DIGEST])]
        return kept[:_MAX_DELTAS]

    def missing(self, source: Endpoint, *, deltas: Iterable[Descriptor] = ()) -> list[Descriptor]:
        """Blobs of the bundle neither ``source`` (whole, or as a chunk delta on a base kept here) nor the store has."""
        graph = walk(self.top, source)
        lacking = [b for b in graph.blobs if not source.has_blob(b.digest) and self.store.find_blob(b.digest) is None
                   and not self.layout.has_blob(b.digest)]
        if lacking and (deltas := self.usable(deltas)):
            found = read_deltas(source, deltas, {b.digest: b for b in lacking}, warn=self.passed_over.append,
                                has_base=self._has_blob)
            lacking = [b for b in lacking if b.digest not in found]
        return lacking

    def _has_blob(self, digest: str) -> bool:
        return self.store.find_blob(digest) is not None

    def _adopt(self, blob: Descriptor) -> None:
        existing = self.store.find_blob(blob.digest)
        if existing is not None and self.layout.link_blob(blob, existing):
            self.layout.drop_partial(blob.digest)  # an earlier, cut download of it is needless now

    def complete(self) -> Path:
        """Write the metadata and ``index.json``, and move the bundle to its place (or use the one already there)."""
        final = self.store.path(self.top.digest)
        try:
            if self.store.has(self.top.digest):
                shutil.rmtree(self.layout.root)  # the same bytes arrived another way first
                return final
            self.layout.write_metadata(self.metadata)
            self.layout.drop_partials()  # a bundle holds its blobs and nothing else
            shutil.rmtree(self.layout.root / PACKS, ignore_errors=True)
            self.layout.finish([self.top])
            shutil.rmtree(final, ignore_errors=True)  # an unfinished leftover (no index.json)
            self.layout.root.rename(final)
            fsync_dir(self.store.root)
        except OSError as e:
            raise DeviceFault(f"{self.store.root}: cannot keep the bundle ({e.strerror})") from e
        return final


class BundleStore:
    """``STATE/bundles``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "bundles"

    def path(self, digest: str) -> Path:
        return self.root / _hex(check_digest(digest))

    def has(self, digest: str) -> bool:
        return (self.path(digest) / "index.json").is_file()

    def lock_path(self, digest: str) -> Path:
        """The lock of the one process that may assemble this bundle (removed with the bundle: see :func:`remove_lock`)."""
        return self.root / _LOCKS / _hex(check_digest(digest))

    def find_blob(self, digest: str) -> Path | None:
        """A kept bundle's copy of the blob, if any."""
        if not _DIGEST.fullmatch(digest):
            return None  # (a digest names a file here: nothing else may)
        try:
            bundles = [b for b in self.root.iterdir() if not b.name.startswith(".")]
        except FileNotFoundError:
            return None
        for bundle in bundles:
            candidate = bundle / "blobs" / "sha256" / _hex(digest)
            if candidate.is_file():
                return candidate
        return None

    def incoming(self, top: Descriptor, *, resumable: bool = False) -> Incoming:
        """A bundle to assemble; ``resumable`` (a download) keeps what arrived when an outage cuts it short."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise DeviceFault(f"{self.root}: cannot make the bundle store ({e.strerror})") from e
        return Incoming(self, top, resumable=resumable)

    def ingest(self, artifact: Artifact, digest: str, *, advance: Callable[[int], None] = lambda _: None) -> Path:
        """Copy the bundle or overlay whose top index is ``digest`` from ``artifact`` (a bundle, an overlay,
        or a medium holding it) into the store; return its path there. Every blob is hashed on its way
        in (and then trusted: the store holds nothing else); one a kept bundle has is linked instead.

        A delta whose base this device does not have is refused before anything is copied.
        """
        top = next((t for t in artifact.tops if t.digest == digest), None)
        if top is None:
            raise DeliveryError(f"{artifact.path}: holds no bundle or overlay {digest}")
        if artifact.kind is Kind.MEDIUM:
            self._check_base(artifact, digest)
        if self.has(top.digest):
            return self.path(top.digest)
        source = ReaderEndpoint(artifact.reader)
        deltas = self._chunk_deltas(artifact, digest)
        with self.incoming(top) as incoming:
            missing = incoming.missing(source, deltas=deltas)
            if missing:
                first = incoming.passed_over[0] if incoming.passed_over else None  # a delta read failing: its fault
                why = f"; its chunk delta could not be used: {first.diagnostics()}" if first else ""
                raise (type(first) if first else Refused)(
                    f"{artifact.path}: blob {missing[0].digest} of {_identity(top)} is neither on the medium nor on this device "
                    f"({len(missing)} missing in all){why}")
            incoming.fill(source, deltas=deltas, advance=advance)
            for name in artifact.reader.metadata_names():
                with artifact.reader.open_metadata(name) as stream:
                    incoming.metadata[name] = stream.read(MAX_JSON_BYTES + 1)
            return incoming.complete()

    def _chunk_deltas(self, artifact: Artifact, digest: str) -> list[Descriptor]:
        """The chunk delta a medium carries for the bundle ``digest`` (none for a bundle or overlay)."""
        if artifact.kind is not Kind.MEDIUM:
            return []
        entry = next((b for b in read_medium(artifact.reader, artifact.tops).bundles if b.top.digest == digest), None)
        return [entry.chunks] if entry is not None and entry.chunks is not None else []

    def _check_base(self, artifact: Artifact, digest: str) -> None:
        entry = next((b for b in read_medium(artifact.reader, artifact.tops).bundles if b.top.digest == digest), None)
        if entry is not None and entry.base is not None and not self.has(entry.base["digest"]):
            raise Refused(f"{artifact.path}: {entry.name} {entry.version} is a delta on {entry.name} {entry.base['version']} "
                          f"({entry.base['digest'][:19]}), which this device does not have; bring a complete medium")

    def prune(self, keep: set[str]) -> list[str]:
        """Remove the bundles whose index is not in ``keep``, and downloads left unfinished for a day
        (or made needless); a download in progress, and a bundle whose lock someone holds (a poll
        about to install it), are left alone. Returns the names removed. Call it under the install
        lock: what it removes, no install is using."""
        wanted = {_hex(d) for d in keep}
        removed = []
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                if entry.name in wanted or entry.name == _LOCKS:
                    continue
                if entry.name.startswith(_INCOMING):
                    if self._remove_if_abandoned(entry):
                        removed.append(entry.name)
                    continue
                if not _HEX.fullmatch(entry.name):
                    shutil.rmtree(entry)  # not one of ours
                    removed.append(entry.name)
                    continue
                with file_lock(self.lock_path(f"sha256:{entry.name}"), wait=False):  # a poll may hold it, to install next
                    shutil.rmtree(entry)
                removed.append(entry.name)
            except OSError:
                continue  # gone already, busy, or locked: the next prune sees it again
        self._prune_locks()
        return removed

    def _prune_locks(self) -> None:
        """Remove the lock files of bundles that are gone (one nobody holds; see :func:`remove_lock`)."""
        try:
            locks = list((self.root / _LOCKS).iterdir())
        except OSError:
            return
        for lock in locks:
            if not ((self.root / lock.name).exists() or (self.root / f"{_INCOMING}{lock.name}").exists()):
                try:
                    remove_lock(lock)
                except (OSError, DeviceFault):
                    continue

    def _remove_if_abandoned(self, incoming: Path) -> bool:
        """Remove an unfinished download nobody is writing, if it is needless or a day old (under its lock)."""
        hexdigest = incoming.name.removeprefix(_INCOMING)
        if not _HEX.fullmatch(hexdigest):
            shutil.rmtree(incoming)  # not one of ours
            return True
        try:
            with file_lock(self.lock_path(f"sha256:{hexdigest}"), wait=False):
                files = [p for p in incoming.rglob("*") if p.is_file()]  # a partial blob grows as it arrives
                newest = max((p.stat().st_mtime for p in files), default=incoming.stat().st_mtime)
                if not (self.has(f"sha256:{hexdigest}") or time.time() - newest > _INCOMING_KEPT_S):
                    return False
                shutil.rmtree(incoming)
                return True
        except BlockingIOError:
            return False  # someone is writing it now


def _identity(top: Descriptor) -> str:
    # index.json's annotations lie outside the signed digest: name the index by what covers it
    return f"index {top.digest[:19]}…"


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")
