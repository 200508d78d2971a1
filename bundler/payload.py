"""Models and configs as payload layers: zstd-compressed when that makes them smaller.

A file is stored as one layer; a directory as a deterministic tar of its regular files. Whether
compression pays is decided from a few samples, so a 2 GiB incompressible model is copied, not
compressed in vain. The content digest is recorded beside the stored digest either way.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from bundler.writer import LayoutWriter
from updater.content import copy_hashed
from updater.errors import InputError
from updater.oci import ANNOTATION, MEDIA, Descriptor
from updater.progress import Progress

__all__ = ["FileEntry", "add_file_component"]

ZSTD_LEVEL = 3
_SAMPLE = 256 << 10
_WORTH = 0.9  # compress only if samples shrink to 90% or less


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """A model or config as stored in the bundle."""

    role: str  # model or config
    name: str
    kind: str  # file or directory
    layer: Descriptor
    content_digest: str
    content_size: int
    provenance: dict[str, str] | None = None  # identity, issuer, and the digests of the Sigstore material
    extra_layers: tuple[Descriptor, ...] = ()  # the Sigstore bundle and trusted root it was checked with

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "mediaType": self.layer.media_type,
            "digest": self.layer.digest,
            "size": self.layer.size,
            "uncompressedDigest": self.content_digest,
            "uncompressedSize": self.content_size,
        }
        if self.provenance is not None:
            data["provenance"] = self.provenance
        return data


def add_file_component(
    writer: LayoutWriter, work: Path, *, role: str, name: str, path: Path, epoch: int, progress: Progress, label: str
) -> FileEntry:
    """Store the file or directory at ``path`` as a payload layer."""
    base = MEDIA.MODEL if role == "model" else MEDIA.CONFIG
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{role} {name}: {path} not found") from None
    if stat.S_ISDIR(mode):
        kind, media_type, source = "directory", base + MEDIA.TAR_SUFFIX, _tar_directory(path, work / f"{role}-{name}.tar", epoch)
    elif stat.S_ISREG(mode):
        kind, media_type, source = "file", base, path
    else:
        raise InputError(f"{role} {name}: {path} is not a regular file or directory")
    progress.step(label, total_bytes=source.stat().st_size)
    layer, content = _store(writer, source, media_type, progress)
    annotations = {
        ANNOTATION.TITLE: name,
        "dev.sealift.component": role,
        ANNOTATION.UNCOMPRESSED_DIGEST: content[0],
        ANNOTATION.UNCOMPRESSED_SIZE: str(content[1]),
    }
    layer = Descriptor(media_type=layer.media_type, digest=layer.digest, size=layer.size, annotations=annotations)
    return FileEntry(role=role, name=name, kind=kind, layer=layer, content_digest=content[0], content_size=content[1])


def _store(writer: LayoutWriter, source: Path, media_type: str, progress: Progress) -> tuple[Descriptor, tuple[str, int]]:
    size = source.stat().st_size
    if _worth_compressing(source, size):
        temp = writer.temp_path()
        try:
            with open(source, "rb", buffering=0) as src, open(temp, "wb", buffering=0) as out:
                sink = _HashingSink(out)
                compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
                try:
                    with compressor.stream_writer(sink, size=size, closefd=False) as z:  # type: ignore[arg-type]
                        content = copy_hashed(src, z, progress=progress.advance)
                except zstandard.ZstdError as e:  # the frame header promised `size` bytes
                    raise InputError(f"{source}: changed size while it was read ({e})") from e
            if sink.size < content[1]:
                digest = f"sha256:{sink.sha.hexdigest()}"
                writer.adopt(temp, digest)
                return Descriptor(media_type=media_type + MEDIA.ZSTD_SUFFIX, digest=digest, size=sink.size), content
        finally:
            temp.unlink(missing_ok=True)
    digest, stored = writer.add_file(source, what=str(source))
    return Descriptor(media_type=media_type, digest=digest, size=stored), (digest, stored)


def _worth_compressing(path: Path, size: int) -> bool:
    """Compress a few samples (start, middle, end); worth it if they shrink enough."""
    if size < 512:
        return False
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    raw = packed = 0
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            f.seek(offset)
            sample = f.read(_SAMPLE)
            raw += len(sample)
            packed += len(compressor.compress(sample))
    return packed <= raw * _WORTH


class _HashingSink:
    """Writes compressed bytes to a file while hashing them."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def _tar_directory(root: Path, dest: Path, epoch: int) -> Path:
    """A deterministic tar of a directory of regular files (symlinks and devices are refused)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            rel = path.relative_to(root).as_posix()
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = path.stat().st_size, 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return dest


def _walk_error(error: OSError) -> None:
    raise InputError(f"{error.filename}: cannot read the directory ({error.strerror})") from error


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_walk_error):
        dirnames.sort()
        here = Path(dirpath)
        for name in dirnames + sorted(filenames):
            path = here / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InputError(f"{path}: symbolic links are not allowed in a model or config directory")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise InputError(f"{path}: only regular files and directories are allowed in a model or config directory")
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
