"""The device's bundle store: the bundles of the releases it keeps, as OCI layouts, by index digest.

``STATE/bundles/HEX`` is a complete bundle (``index.json`` written last); ``.incoming-HEX`` is
one being assembled, kept across interruptions so a download resumes where it stopped. Every
bundle a device installs passes through here, wherever it came from (a path, a medium, a
registry): a blob another kept bundle already has is hard-linked, not fetched again, and a
delta medium finds its base here. Blobs are checked against their digests as they arrive; the
installer then verifies the assembled bundle as a whole (TUF, every blob, the profile). Bundles
no kept release needs are removed after each install.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from updater.durable import fsync_dir
from updater.errors import DeliveryError, DeviceFault, InputError, Refused
from updater.layout import LayoutReader, open_layout
from updater.locks import exclusive_lock
from updater.medium import MediumBundle, looks_like_medium, read_medium
from updater.oci import ANNOTATION, MAX_JSON_BYTES, MEDIA, Descriptor, check_digest
from updater.profiles import Profile
from updater.transfer import LayoutStore, ReaderStore, Store, Transferred, copy_graph, walk
from updater.versions import version_key

__all__ = ["BundleStore", "Incoming", "Offer", "Offered", "offer"]

_INCOMING = ".incoming-"
_LOCKS = ".locks"
_HEX = re.compile(r"[0-9a-f]{64}")
_INCOMING_KEPT_S = 24 * 3600  # an unfinished download untouched this long is given up


class Incoming:
    """A bundle being assembled in the store, under a lock of its own (one writer per bundle);
    ``complete`` makes it a bundle. Use it as a context manager."""

    def __init__(self, store: BundleStore, top: Descriptor) -> None:
        self.store = store
        self.top = top
        self.layout = LayoutStore(store.root / f"{_INCOMING}{_hex(top.digest)}", what=f"store {_hex(top.digest)[:12]}")
        self.metadata: dict[str, bytes] = {}
        self.moved = Transferred()
        self._lock = ExitStack()

    def __enter__(self) -> Incoming:
        self._lock.enter_context(exclusive_lock(self.store.lock_path(self.top.digest), wait=True))
        self.layout.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.close()

    def fill(self, source: Store, *, advance: Callable[[int], None] = lambda _: None) -> None:
        """Take every blob of the bundle: from kept bundles (hard links) or from ``source``."""
        graph = walk(self.top, source)
        for blob in [*graph.blobs, *(manifest for manifest, _ in graph.manifests)]:
            if not self.layout.has_blob(blob.digest):
                self._adopt(blob)
        graph.blobs = [b for b in graph.blobs if not self.layout.has_blob(b.digest)]
        self.moved.add(copy_graph(graph, source, self.layout, advance=advance))

    def missing(self, source: Store) -> list[Descriptor]:
        """Blobs of the bundle neither ``source`` nor the store has."""
        graph = walk(self.top, source)
        return [b for b in graph.blobs if not source.has_blob(b.digest) and self.store.find_blob(b.digest) is None
                and not self.layout.has_blob(b.digest)]

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
        """The lock of the one process that may assemble this bundle (kept: removing a lock file races its users)."""
        return self.root / _LOCKS / _hex(check_digest(digest))

    def find_blob(self, digest: str) -> Path | None:
        """A kept bundle's copy of the blob, if any."""
        try:
            bundles = [b for b in self.root.iterdir() if not b.name.startswith(".")]
        except FileNotFoundError:
            return None
        for bundle in bundles:
            candidate = bundle / "blobs" / "sha256" / _hex(digest)
            if candidate.is_file():
                return candidate
        return None

    def incoming(self, top: Descriptor) -> Incoming:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Incoming(self, top)

    def take(self, path: Path, profile: Profile | None, *, overlay: str | None = None) -> Path:
        """Copy the bundle at ``path`` (a bundle, or this device's bundle on a medium; or the medium's
        overlay whose index is ``overlay``) into the store.

        A delta whose base this device does not have is refused before anything is copied.
        """
        medium = looks_like_medium(path)
        with open_layout(path, strict=not medium) as reader:
            source = ReaderStore(reader)
            if overlay is not None:
                top = next((o.top for o in read_medium(reader).overlays if o.top.digest == overlay), None)
                if top is None:
                    raise DeliveryError(f"{path}: holds no overlay {overlay}")
            elif medium:
                entry = _pick(read_medium(reader).bundles, profile, path)
                top = entry.top
                if entry.base is not None and not self.has(entry.base["digest"]):
                    raise Refused(
                        f"{path}: {entry.name} {entry.version} is a delta on {entry.name} {entry.base['version']} "
                        f"({entry.base['digest'][:19]}), which this device does not have; bring a complete medium")
            else:
                top = _single_top(reader)
            if self.has(top.digest):
                return self.path(top.digest)
            with self.incoming(top) as incoming:
                missing = incoming.missing(source)
                if missing:
                    raise Refused(f"{path}: blob {missing[0].digest} of {_identity(top)} is neither on the medium nor "
                                        f"on this device ({len(missing)} missing in all)")
                incoming.fill(source)
                for name in reader.metadata_names():
                    with reader.open_metadata(name) as stream:
                        incoming.metadata[name] = stream.read(MAX_JSON_BYTES + 1)
                return incoming.complete()

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
                with exclusive_lock(self.lock_path(f"sha256:{entry.name}"), wait=False):  # a poll may hold it, to install next
                    shutil.rmtree(entry)
                removed.append(entry.name)
            except OSError:
                continue  # gone already, busy, or locked: the next prune sees it again
        return removed

    def _remove_if_abandoned(self, incoming: Path) -> bool:
        """Remove an unfinished download nobody is writing, if it is needless or a day old (under its lock)."""
        hexdigest = incoming.name.removeprefix(_INCOMING)
        if not _HEX.fullmatch(hexdigest):
            shutil.rmtree(incoming)  # not one of ours
            return True
        try:
            with exclusive_lock(self.lock_path(f"sha256:{hexdigest}"), wait=False):
                files = [p for p in incoming.rglob("*") if p.is_file()]  # a partial blob grows as it arrives
                newest = max((p.stat().st_mtime for p in files), default=incoming.stat().st_mtime)
                if not (self.has(f"sha256:{hexdigest}") or time.time() - newest > _INCOMING_KEPT_S):
                    return False
                shutil.rmtree(incoming)
                return True
        except BlockingIOError:
            return False  # someone is writing it now


@dataclass(frozen=True)
class Offered:
    """A bundle or overlay that a path holds: its index digest, application name and version, and
    an overlay's ``fits`` range. Read from the path, not yet verified: it only says what to try."""

    digest: str
    name: str
    version: str
    fits: str = ""


@dataclass(frozen=True)
class Offer:
    """What a path holds for this device: a bundle for its profile (the newest, on a medium), the
    overlays for its site, or both."""

    bundle: Offered | None = None
    overlays: tuple[Offered, ...] = ()


def offer(path: Path, profile: Profile | None, site: str | None) -> Offer:
    """What ``path`` (a bundle, an overlay, or a medium) offers a device of ``profile`` at ``site``.
    Raises Refused or DeliveryError when it is unreadable or holds nothing for this device."""
    medium = looks_like_medium(path)
    with open_layout(path, strict=not medium) as reader:
        if not medium:
            top = _single_top(reader)
            a = _annotations(reader, top)
            offered = Offered(digest=top.digest, name=a.get(ANNOTATION.NAME, ""), version=a.get(ANNOTATION.VERSION, ""),
                              fits=a.get(ANNOTATION.FITS, ""))
            if top.artifact_type != MEDIA.OVERLAY:
                return Offer(bundle=offered)
            if a.get(ANNOTATION.SITE) != site:
                raise Refused(f"{path}: an overlay for site {a.get(ANNOTATION.SITE)}; this device is "
                                    + (f"at site {site}" if site else "not enrolled at any site"))
            return Offer(overlays=(offered,))
        contents = read_medium(reader)
        # what an overlay fits, as its own index says (what TUF signs), not as the medium's listing says
        overlays = tuple(Offered(digest=o.top.digest, name=o.name, version=o.version,
                                 fits=_annotations(reader, o.top).get(ANNOTATION.FITS, ""))
                         for o in contents.overlays if site is not None and o.site == site)
    if overlays and not any(profile is None or b.profile == profile.name for b in contents.bundles):
        return Offer(overlays=overlays)  # a rotation medium
    if not contents.bundles and contents.overlays:
        sites = ", ".join(sorted({o.site for o in contents.overlays}))
        raise Refused(f"{path}: the medium holds only overlays, for sites {sites}; this device is "
                            + (f"at site {site}" if site else "not enrolled at any site"))
    bundle = _pick(contents.bundles, profile, path)  # refused, naming what the medium holds, when nothing fits
    return Offer(bundle=Offered(digest=bundle.top.digest, name=bundle.name, version=bundle.version), overlays=overlays)


def _annotations(reader: LayoutReader, top: Descriptor) -> dict[str, str]:
    """The annotations of a layout's top index (what it claims to be)."""
    try:
        with reader.open_blob(top.digest) as stream:
            data = json.loads(stream.read(MAX_JSON_BYTES + 1))
        found = data.get("annotations") if isinstance(data, dict) else None
    except (ValueError, RecursionError) as e:
        raise Refused(f"{reader.location}: the top index is not JSON ({type(e).__name__})") from e
    return {k: v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}


def _pick(bundles: list[MediumBundle], profile: Profile | None, path: Path) -> MediumBundle:
    fitting = [b for b in bundles if profile is None or b.profile == profile.name]
    if not fitting:
        held = ", ".join(sorted({b.profile for b in bundles})) or "nothing"
        raise Refused(f"{path}: the medium holds no bundle for profile {profile.name if profile else '?'} (it holds {held})")
    if len(fitting) > 1 and profile is None:
        raise InputError(f"{path}: the medium holds bundles for several profiles; name this device's with --profile")
    return max(fitting, key=lambda b: version_key(b.version))


def _single_top(reader: LayoutReader) -> Descriptor:
    try:
        manifests = json.loads(reader.read_small("index.json"))["manifests"]
        if len(manifests) != 1:
            raise Refused(f"{reader.location}: index.json must list exactly one bundle index")
        top = Descriptor.from_json(manifests[0], where=f"{reader.location}: index.json")
    except (ValueError, KeyError, TypeError) as e:
        raise Refused(f"{reader.location}: index.json is not a bundle's index ({type(e).__name__})") from e
    if top.media_type != MEDIA.INDEX:
        raise Refused(f"{reader.location}: index.json does not point at a bundle index")
    return top


def _identity(top: Descriptor) -> str:
    a = top.annotations
    return f"{a.get(ANNOTATION.NAME, 'bundle')} {a.get(ANNOTATION.VERSION, top.digest[:19])}"


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")
