"""A small, deterministic writer of OCI image layouts (stdlib only).

It builds container images without a container engine, so example and test images can be made
offline and bit-for-bit reproducibly: the same entries, config and ``SOURCE_DATE_EPOCH`` always
give the same layer, config, manifest and index digests (given the same zlib; ``diff_ids``, the
digests of the uncompressed layers, do not even depend on that).

Public API:

- ``FileEntry``, ``DirEntry``, ``SymlinkEntry`` (``Entry`` is their union): what a layer holds.
  Paths are inside the image (``/bin/sh`` or ``bin/sh``); modes, owner (0:0) and mtime are fixed,
  so the host filesystem's metadata never leaks into a layer. Missing parent directories are
  added (mode 0755).
- ``directory_entries(root, prefix, executable=...)``: the entries for a host directory tree.
- ``busybox_rootfs_entries(busybox, applets)``: ``/bin/busybox`` plus one symlink per applet.
- ``Platform``, ``Healthcheck``, ``ImageConfig``, ``PlatformImage``: one image of a layout.
- ``write_image_layout(out_dir, tag, images)``: writes ``oci-layout``, ``index.json`` and
  ``blobs/sha256/``, replacing ``out_dir``. One image gives ``index.json`` -> manifest; several
  give ``index.json`` -> image index (one manifest per platform). Returns the digest that
  ``index.json`` points to.
- ``source_date_epoch()``: the timestamp used for ``created`` and every layer entry's mtime.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

__all__ = [
    "DirEntry",
    "Entry",
    "FileEntry",
    "Healthcheck",
    "ImageConfig",
    "Platform",
    "PlatformImage",
    "SymlinkEntry",
    "busybox_rootfs_entries",
    "directory_entries",
    "source_date_epoch",
    "write_image_layout",
]

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_NANOSECONDS = 1_000_000_000


# --- what a layer holds ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """A regular file whose content is ``data``, or is streamed from the host file ``source``."""

    path: str
    mode: int = 0o644
    data: bytes | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.source is None):
            raise ValueError(f"file entry {self.path}: give exactly one of data or source")


@dataclass(frozen=True, kw_only=True)
class DirEntry:
    """A directory."""

    path: str
    mode: int = 0o755


@dataclass(frozen=True, kw_only=True)
class SymlinkEntry:
    """A symbolic link to ``target`` (stored as given, relative or absolute)."""

    path: str
    target: str


Entry = FileEntry | DirEntry | SymlinkEntry


def directory_entries(root: Path, prefix: str, *, executable: Callable[[PurePosixPath], bool] = lambda _: False) -> list[Entry]:
    """The files and directories under host directory ``root``, placed under ``prefix`` in the image.

    Files get mode 0755 where ``executable(relative_path)`` is true and 0644 otherwise, so the
    result does not depend on the checkout's umask. Symlinks and special files are refused.
    """
    entries: list[Entry] = [DirEntry(path=prefix)]
    for host in sorted(root.rglob("*")):
        relative = PurePosixPath(host.relative_to(root).as_posix())
        path = f"{prefix.rstrip('/')}/{relative}"
        if host.is_symlink() or not (host.is_file() or host.is_dir()):
            raise ValueError(f"{host}: only regular files and directories can be copied into an image")
        if host.is_dir():
            entries.append(DirEntry(path=path))
        else:
            entries.append(FileEntry(path=path, source=host, mode=0o755 if executable(relative) else 0o644))
    return entries


def busybox_rootfs_entries(busybox: Path, applets: Iterable[str]) -> list[Entry]:
    """``/bin/busybox`` from the host file ``busybox``, and ``/bin/<applet>`` -> ``busybox`` links."""
    entries: list[Entry] = [DirEntry(path="/bin"), FileEntry(path="/bin/busybox", source=busybox, mode=0o755)]
    for applet in sorted(set(applets) - {"busybox"}):
        if not applet or "/" in applet:
            raise ValueError(f"applet name {applet!r} is not a plain file name")
        entries.append(SymlinkEntry(path=f"/bin/{applet}", target="busybox"))
    return entries


# --- what an image is --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Platform:
    """An image's platform, as in an image index: ``linux/amd64``, ``linux/arm64/v8``."""

    architecture: str
    os: str = "linux"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``OS/ARCH[/VARIANT]``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not OS/ARCH[/VARIANT]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    def to_json(self) -> dict[str, str]:
        data = {"architecture": self.architecture, "os": self.os}
        if self.variant is not None:
            data["variant"] = self.variant
        return data

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, kw_only=True)
class Healthcheck:
    """Docker's image ``Healthcheck``: ``test`` is ``["CMD", ...]`` or ``["CMD-SHELL", "..."]``."""

    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    start_period_s: float = 0.0
    retries: int = 3

    def to_json(self) -> dict[str, Any]:
        # Docker keeps these durations as integer nanoseconds.
        return {
            "Test": list(self.test),
            "Interval": round(self.interval_s * _NANOSECONDS),
            "Timeout": round(self.timeout_s * _NANOSECONDS),
            "StartPeriod": round(self.start_period_s * _NANOSECONDS),
            "Retries": self.retries,
        }


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """The runtime part of an image config (the ``config`` object Docker reads)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    exposed_ports: tuple[str, ...] = ()  # "8080/tcp"
    working_dir: str = ""
    healthcheck: Healthcheck | None = None
    labels: tuple[tuple[str, str], ...] = ()
    user: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"Env": list(self.env)}
        if self.entrypoint:
            data["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            data["Cmd"] = list(self.cmd)
        if self.exposed_ports:
            data["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.working_dir:
            data["WorkingDir"] = self.working_dir
        if self.healthcheck is not None:
            data["Healthcheck"] = self.healthcheck.to_json()
        if self.labels:
            data["Labels"] = dict(self.labels)
        if self.user:
            data["User"] = self.user
        return data


@dataclass(frozen=True, kw_only=True)
class PlatformImage:
    """One image of a layout: its platform, its layers (bottom first) and its runtime config."""

    platform: Platform
    layers: tuple[tuple[Entry, ...], ...]
    config: ImageConfig = field(default_factory=ImageConfig)


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` from the environment, or 0 where it is unset."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not text.isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH is {text!r}, expected a whole number of seconds")
    return int(text)


# --- writing a layout --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            data["platform"] = self.platform.to_json()
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data


def write_image_layout(out_dir: Path, tag: str, images: Sequence[PlatformImage], *, epoch: int | None = None) -> str:
    """Write ``images`` as an OCI image layout at ``out_dir`` (replacing it), tagged ``tag``.

    ``epoch`` (default: ``source_date_epoch()``) is the images' ``created`` time and the mtime of
    every layer entry. Returns the digest that ``index.json`` points to.
    """
    _check_images(tag, images)
    when = source_date_epoch() if epoch is None else epoch
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        blobs = _BlobStore(staging)
        manifests = [_write_image(blobs, image, when) for image in images]
        top = manifests[0] if len(manifests) == 1 else _write_index(blobs, manifests)
        _write_layout_files(staging, top, tag)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return top.digest


def _check_images(tag: str, images: Sequence[PlatformImage]) -> None:
    if not images:
        raise ValueError(f"image layout {tag}: no images given")
    platforms = [str(image.platform) for image in images]
    if len(set(platforms)) != len(platforms):
        raise ValueError(f"image layout {tag}: a platform is given twice ({', '.join(platforms)})")
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"tag {tag!r} is empty or holds whitespace")


def _write_image(blobs: _BlobStore, image: PlatformImage, epoch: int) -> _Descriptor:
    layers = [_write_layer(blobs, entries, epoch) for entries in image.layers]
    config = {
        "created": _rfc3339(epoch),
        "architecture": image.platform.architecture,
        "os": image.platform.os,
        **({"variant": image.platform.variant} if image.platform.variant else {}),
        "config": image.config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": blobs.put_json(config, MEDIA_CONFIG).to_json(),
        "layers": [descriptor.to_json() for descriptor, _ in layers],
    }
    written = blobs.put_json(manifest, MEDIA_MANIFEST)
    return _Descriptor(media_type=MEDIA_MANIFEST, digest=written.digest, size=written.size, platform=image.platform)


def _write_index(blobs: _BlobStore, manifests: Sequence[_Descriptor]) -> _Descriptor:
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    return blobs.put_json(index, MEDIA_INDEX)


def _write_layout_files(root: Path, top: _Descriptor, tag: str) -> None:
    tagged = _Descriptor(media_type=top.media_type, digest=top.digest, size=top.size, annotations=((REF_NAME, tag),))
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [tagged.to_json()]}
    (root / "index.json").write_bytes(_canonical_json(index))
    (root / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Put the finished layout in place, so a reader never sees a half-written one."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    staging.chmod(0o755)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _BlobStore:
    """``blobs/sha256`` of a layout being written: every blob is named by its digest."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.dir.mkdir(parents=True)

    def put_json(self, obj: object, media_type: str) -> _Descriptor:
        data = _canonical_json(obj)
        digest = hashlib.sha256(data).hexdigest()
        (self.dir / digest).write_bytes(data)
        return _Descriptor(media_type=media_type, digest=f"sha256:{digest}", size=len(data))

    def temp_file(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        os.close(fd)
        return Path(name)

    def adopt(self, temp: Path, digest: str) -> None:
        os.replace(temp, self.dir / digest)


# --- layers ------------------------------------------------------------------------------------


class _HashingWriter:
    """Passes bytes on to ``sink`` while hashing and counting them."""

    def __init__(self, sink: BinaryIO | gzip.GzipFile) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        self._sink.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _write_layer(blobs: _BlobStore, entries: Sequence[Entry], epoch: int) -> tuple[_Descriptor, str]:
    """Write one gzip layer blob; return its descriptor and its diff_id."""
    temp = blobs.temp_file()
    try:
        with temp.open("wb") as raw:
            compressed = _HashingWriter(raw)
            # filename="" and mtime=0 keep the gzip header free of anything host-specific.
            with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as gz:
                uncompressed = _HashingWriter(gz)
                _write_tar(uncompressed, entries, epoch)
        blobs.adopt(temp, compressed.hexdigest())
    finally:
        temp.unlink(missing_ok=True)
    descriptor = _Descriptor(media_type=MEDIA_LAYER, digest=f"sha256:{compressed.hexdigest()}", size=compressed.size)
    return descriptor, f"sha256:{uncompressed.hexdigest()}"


def _write_tar(out: _HashingWriter, entries: Sequence[Entry], epoch: int) -> None:
    """A POSIX (pax) tar of ``entries`` in path order, ended and padded as tarfile does."""
    for path, entry in _normalised(entries):
        info = _tar_info(path, entry, epoch)
        out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if isinstance(entry, FileEntry):
            _write_content(out, entry, info.size)
    out.write(b"\0" * (2 * _BLOCK))
    out.write(b"\0" * (-out.size % _RECORD))


def _normalised(entries: Sequence[Entry]) -> list[tuple[str, Entry]]:
    """Entries keyed by their clean relative path, parents added, sorted, duplicates refused."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = _clean_path(entry.path)
        if path in by_path:
            raise ValueError(f"layer entry {path} is given twice")
        by_path[path] = entry
    for path in list(by_path):
        for parent in PurePosixPath(path).parents:
            if str(parent) != ".":
                by_path.setdefault(str(parent), DirEntry(path=str(parent)))
    return sorted(by_path.items())


def _clean_path(path: str) -> str:
    parts = PurePosixPath(path.lstrip("/")).parts
    if not parts or any(p in ("..", ".") for p in parts) or "\0" in path:
        raise ValueError(f"layer entry path {path!r} is empty or holds '.', '..' or NUL")
    return "/".join(parts)


def _tar_info(path: str, entry: Entry, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if isinstance(entry, DirEntry):
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
    elif isinstance(entry, SymlinkEntry):
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.target
    else:
        info.type, info.mode = tarfile.REGTYPE, entry.mode
        info.size = len(entry.data) if entry.data is not None else _source(entry).stat().st_size
    return info


def _write_content(out: _HashingWriter, entry: FileEntry, size: int) -> None:
    if entry.data is not None:
        out.write(entry.data)
    else:
        _copy_exactly(_source(entry), out, size)
    out.write(b"\0" * (-size % _BLOCK))


def _copy_exactly(source: Path, out: _HashingWriter, size: int) -> None:
    """Stream ``size`` bytes of ``source``; a file that grew or shrank meanwhile is an error."""
    copied = 0
    with source.open("rb") as f:
        while chunk := f.read(min(_CHUNK, size - copied + 1)):
            copied += len(chunk)
            if copied > size:
                break
            out.write(chunk)
    if copied != size:
        raise ValueError(f"{source} changed while it was read: expected {size} bytes")


def _source(entry: FileEntry) -> Path:
    assert entry.source is not None  # FileEntry guarantees data or source
    return entry.source
