"""Writing an OCI image layout, as a directory or straight into one tar file.

Each distinct blob is stored once. Whole files move with ``copy_file_range`` (in the kernel,
a reflink where the file system has them) while a second thread hashes the source, so a build
reads and writes each byte once. The tar writer puts a placeholder header before each blob and
fills in the name once the digest is known, so a tar bundle costs no extra copy. Either way the
layout is complete only after :meth:`LayoutWriter.finish`, and the build verifies it after that.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tarfile
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from updater.content import copy_hashed
from updater.errors import InputError, Refused
from updater.oci import CHUNK, LAYOUT_VERSION, Advance, Descriptor, canonical_json, check_digest

__all__ = ["DirWriter", "LayoutWriter", "TarWriter", "open_writer"]

_COPY_STEP = 64 << 20  # progress granularity of kernel copies
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def open_writer(temp: Path, *, tar: bool, mtime: int, progress: Advance | None = None) -> LayoutWriter:
    """A writer that builds its layout under the empty directory ``temp``."""
    if tar:
        return TarWriter(temp / "bundle.tar", work=temp, mtime=mtime, progress=progress)
    return DirWriter(temp / "layout", work=temp, progress=progress)


class LayoutWriter(ABC):
    """Stores blobs by digest; ``product`` is the finished layout (a directory or a tar file)."""

    product: Path

    def __init__(self, *, work: Path, progress: Advance | None) -> None:
        self.work = work
        self.progress = progress
        self._count = 0

    # -- what a backend provides: a place for one new blob, then keep it or drop it

    @abstractmethod
    def has(self, digest: str) -> bool: ...

    @abstractmethod
    def _begin(self) -> tuple[int, int]:
        """Open space for a new blob: (file descriptor, offset of its first byte)."""

    @abstractmethod
    def _commit(self, digest: str, size: int) -> None:
        """Keep the blob just written under ``digest`` (dropping it if already stored)."""

    @abstractmethod
    def _abort(self) -> None: ...

    @abstractmethod
    def finish(self, top: Descriptor) -> None:
        """Write ``index.json`` and ``oci-layout``: the layout is complete only after this."""

    @abstractmethod
    def close(self) -> None:
        """Release open files; a layout left unfinished stays incomplete (the caller removes it)."""

    # -- the ways blobs arrive

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.has(digest):
            fd, start = self._begin()
            try:
                _pwrite_all(fd, data, start)
            except BaseException:
                self._abort()
                raise
            self._commit(digest, len(data))
        return digest, len(data)

    def add_stream(self, source: IO[bytes], *, expect: Descriptor | None = None, what: str = "blob") -> tuple[str, int]:
        """Copy a stream while hashing it; with ``expect``, refuse bytes that do not match."""
        fd, start = self._begin()
        try:
            digest, size = copy_hashed(source, _FdSink(fd, start), limit=expect.size if expect else None, progress=self.progress)
            if expect is not None and (digest, size) != (expect.digest, expect.size):
                raise Refused(
                    f"{what}: source gave {size} bytes with digest {digest}, expected {expect.size} bytes with {expect.digest}"
                )
        except BaseException:
            self._abort()
            raise
        self._commit(digest, size)
        return digest, size

    def add_file(self, path: Path, *, offset: int = 0, expect: Descriptor | None = None, what: str = "blob") -> tuple[str, int]:
        """Copy a file (or, with ``expect``, the blob at ``offset`` in it) with the kernel.

        Without ``expect`` the source is hashed by a second thread during the copy; with it, the
        bytes are taken as the digest they claim and the build's final verification checks them.
        """
        if expect is not None and self.has(expect.digest):
            return expect.digest, expect.size
        with open(path, "rb", buffering=0) as src:
            size = expect.size if expect is not None else os.fstat(src.fileno()).st_size - offset
            fd, start = self._begin()
            try:
                digest = self._copy_file(src.fileno(), offset, size, fd, start, hashed=expect is None)
            except _Shrank as e:
                self._abort()
                raise InputError(f"{what}: {path} changed while it was read ({e})") from e
            except BaseException:
                self._abort()
                raise
        digest = expect.digest if expect is not None else digest
        self._commit(digest, size)
        return digest, size

    def adopt(self, temp: Path, digest: str) -> None:
        """Take a finished file under ``work`` (already hashed to ``digest``) into the layout."""
        try:
            if not self.has(digest):
                self.add_file(temp, expect=Descriptor(media_type="", digest=digest, size=temp.stat().st_size))
        finally:
            temp.unlink(missing_ok=True)

    def temp_path(self) -> Path:
        """A fresh path under ``work``, on the layout's file system (the caller removes it)."""
        self._count += 1
        return self.work / f"incoming-{self._count}"

    def _copy_file(self, src: int, offset: int, size: int, dst: int, start: int, *, hashed: bool) -> str:
        if not hashed:
            _kernel_copy(src, offset, dst, start, size, self.progress)
            return ""
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(_hash_range, src, offset, size, stop)
            try:
                _kernel_copy(src, offset, dst, start, size, self.progress)
            except BaseException:
                stop.set()  # do not make the caller wait for a hash nobody will use
                raise
            return digest.result()


class DirWriter(LayoutWriter):
    """An OCI layout directory: one file per blob under ``blobs/sha256``."""

    def __init__(self, root: Path, *, work: Path, progress: Advance | None = None) -> None:
        super().__init__(work=work, progress=progress)
        self.product = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True)
        self._pending: tuple[Path, int] | None = None

    def has(self, digest: str) -> bool:
        return (self.blobs / check_digest(digest).removeprefix("sha256:")).exists()

    def adopt(self, temp: Path, digest: str) -> None:
        """Rename: the temporary file is already on the layout's file system."""
        if self.has(digest):
            temp.unlink()
        else:
            os.chmod(temp, 0o644)
            os.replace(temp, self.blobs / check_digest(digest).removeprefix("sha256:"))

    def _begin(self) -> tuple[int, int]:
        path = self.temp_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._pending = (path, fd)
        return fd, 0

    def _commit(self, digest: str, size: int) -> None:
        path, fd = self._take()
        os.close(fd)
        if self.has(digest):
            path.unlink()
        else:
            os.replace(path, self.blobs / check_digest(digest).removeprefix("sha256:"))

    def _abort(self) -> None:
        path, fd = self._take()
        os.close(fd)
        path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._pending is not None:
            self._abort()

    def _take(self) -> tuple[Path, int]:
        assert self._pending is not None
        pending, self._pending = self._pending, None
        return pending

    def finish(self, top: Descriptor) -> None:
        for name, data in _layout_files(top):
            path = self.temp_path()
            path.write_bytes(data)
            os.chmod(path, 0o644)
            os.replace(path, self.product / name)


class TarWriter(LayoutWriter):
    """An OCI layout as one deterministic tar file, blobs in the order they were added."""

    def __init__(self, path: Path, *, work: Path, mtime: int, progress: Advance | None = None) -> None:
        super().__init__(work=work, progress=progress)
        self.product = path
        self.mtime = mtime
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self.end = 0  # where the next member's header goes
        self.stored: set[str] = set()
        for directory in ("blobs", "blobs/sha256"):
            self.end += _pwrite_all(self.fd, self._header(directory, 0, directory=True), self.end)

    def has(self, digest: str) -> bool:
        return check_digest(digest) in self.stored

    def _begin(self) -> tuple[int, int]:
        return self.fd, self.end + tarfile.BLOCKSIZE

    def _commit(self, digest: str, size: int) -> None:
        if self.has(digest):
            os.ftruncate(self.fd, self.end)
            return
        name = f"blobs/sha256/{check_digest(digest).removeprefix('sha256:')}"
        self._close_member(name, size)
        self.stored.add(digest)

    def _abort(self) -> None:
        os.ftruncate(self.fd, self.end)

    def _close_member(self, name: str, size: int) -> None:
        _pwrite_all(self.fd, self._header(name, size), self.end)
        data_end = self.end + tarfile.BLOCKSIZE + size
        padding = -size % tarfile.BLOCKSIZE
        _pwrite_all(self.fd, b"\0" * padding, data_end)
        self.end = data_end + padding

    def finish(self, top: Descriptor) -> None:
        for name, data in _layout_files(top):
            _pwrite_all(self.fd, data, self.end + tarfile.BLOCKSIZE)
            self._close_member(name, len(data))
        end = self.end + 2 * tarfile.BLOCKSIZE  # the end-of-archive marker
        end += -end % tarfile.RECORDSIZE
        _pwrite_all(self.fd, b"\0" * (end - self.end), self.end)
        os.ftruncate(self.fd, end)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _header(self, name: str, size: int, *, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = self.mtime, 0, 0, "", ""
        info.type, info.mode, info.size = (tarfile.DIRTYPE, 0o755, 0) if directory else (tarfile.REGTYPE, 0o644, size)
        header = info.tobuf(format=tarfile.GNU_FORMAT)
        assert len(header) == tarfile.BLOCKSIZE  # names here are short: one header block, no extensions
        return header


def _layout_files(top: Descriptor) -> list[tuple[str, bytes]]:
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top.to_json()]}
    return [("index.json", canonical_json(index)), ("oci-layout", canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))]


class _FdSink:
    """A write() target that writes at increasing offsets of a descriptor."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset = fd, offset

    def write(self, data: bytes | memoryview, /) -> int:
        self.offset += _pwrite_all(self.fd, data, self.offset)
        return len(data)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


class _Shrank(Exception):
    """The source ended before the size it had when the copy began."""


def _hash_range(fd: int, offset: int, size: int, stop: threading.Event) -> str:
    sha = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK))
    done = 0
    while done < size and not stop.is_set():
        n = os.preadv(fd, [buffer[: min(CHUNK, size - done)]], offset + done)
        if n == 0:
            raise _Shrank(f"{done} of {size} bytes were there")
        sha.update(buffer[:n])
        done += n
    return f"sha256:{sha.hexdigest()}"


def _kernel_copy(src: int, src_offset: int, dst: int, dst_offset: int, size: int, progress: Advance | None) -> None:
    done = 0
    while done < size:
        step = min(_COPY_STEP, size - done)
        try:
            n = os.copy_file_range(src, dst, step, src_offset + done, dst_offset + done)
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            n = _user_copy(src, src_offset + done, dst, dst_offset + done, step)
        if n == 0:
            raise _Shrank(f"{done} of {size} bytes were there")
        done += n
        if progress is not None:
            progress(n)


def _user_copy(src: int, src_offset: int, dst: int, dst_offset: int, size: int) -> int:
    buffer = memoryview(bytearray(CHUNK))
    done = 0
    while done < size:
        n = os.preadv(src, [buffer[: min(CHUNK, size - done)]], src_offset + done)
        if n == 0:
            break
        _pwrite_all(dst, buffer[:n], dst_offset + done)
        done += n
    return done
