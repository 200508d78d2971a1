"""One reader for OCI image layouts stored as directories or tar files.

Blobs are streamed in fixed-size chunks, so no blob is ever held whole in memory. The reader
refuses anything a hostile layout could use to escape or exhaust it: symlinks, special files,
names outside ``blobs/sha256/``, oversized headers, truncated archives. :func:`read_index` is the
one parser of a layout's ``index.json``.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from updater.errors import InputError, Refused, SealiftError
from updater.oci import LAYOUT_VERSION, MAX_JSON_BYTES, METADATA_DIR, METADATA_NAME, Descriptor, check_digest, json_object

__all__ = [
    "MEDIUM_FILE",
    "MEDIUM_FILES",
    "NOTE_FILE",
    "SUMS_FILE",
    "LayoutReader",
    "open_layout",
    "read_index",
]

_BLOB_NAME = re.compile(r"blobs/sha256/[0-9a-f]{64}")
_TAR_METADATA = re.compile(rf"{METADATA_DIR}/{METADATA_NAME.pattern}")


# --- reading -----------------------------------------------------------------------------------


class LayoutReader(Protocol):
    """Read access to an OCI image layout, wherever it is stored."""

    location: str

    def read_small(self, name: str) -> bytes:
        """A small top-level file (``oci-layout``, ``index.json``), at most MAX_JSON_BYTES."""
        ...

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream of the blob's bytes; Refused if it is missing."""
        ...

    def blob_size(self, digest: str) -> int | None:
        """The stored size of a blob, None if it is missing, -1 if it is not a regular file."""
        ...

    def locate(self, digest: str) -> tuple[Path, int] | None:
        """The file and offset where the blob's bytes lie contiguously, for kernel copies; or None."""
        ...

    def blob_names(self) -> set[str]:
        """The digests of every blob stored, referenced or not."""
        ...

    def metadata_names(self) -> set[str]:
        """The files of the bundle's ``tuf/`` folder (signed metadata, outside the content-addressed part)."""
        ...

    def open_metadata(self, name: str) -> BinaryIO:
        """A stream of one ``tuf/`` file; Refused if it is missing."""
        ...

    def close(self) -> None: ...


@contextmanager
def open_layout(path: Path, *, strict: bool = True) -> Iterator[LayoutReader]:
    """Open an OCI layout stored as a directory or as an (uncompressed) tar file.

    ``strict`` refuses a tar holding anything but the layout (bundles); without it, other entries
    are ignored (image archives written by other tools).
    """
    reader: LayoutReader
    if path.is_dir():
        try:
            reader = _DirReader(path)
        except OSError as e:
            raise Refused(f"{path}: cannot open the bundle directory ({e.strerror})") from e
    elif path.is_file():
        reader = _TarReader(path, strict=strict)
    else:
        raise InputError(f"{path}: no such bundle (expected an OCI layout directory or tar file)")
    try:
        yield reader
    finally:
        reader.close()


def read_index(reader: LayoutReader, *, error: type[SealiftError] = Refused) -> tuple[Descriptor, ...]:
    """The entry points a layout's ``index.json`` lists, once its ``oci-layout`` marker says it is one:
    the one reader of those two files. A fault is ``error`` (a layout the user gave as input is
    wrong input; one that arrived is refused)."""
    try:
        marker = json_object(reader.read_small("oci-layout"), f"{reader.location}: oci-layout", error)
        if marker.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise error(f"{reader.location}: oci-layout does not declare imageLayoutVersion {LAYOUT_VERSION}")
        index = json_object(reader.read_small("index.json"), f"{reader.location}: index.json", error)
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise error(f"{reader.location}: index.json lists no manifests")
        return tuple(Descriptor.from_json(m, where=f"{reader.location}: index.json") for m in manifests)
    except Refused as e:  # a missing file or a malformed descriptor, said in the caller's words
        if error is Refused:
            raise
        raise error(str(e)) from e


class _DirReader:
    """A layout directory. Blobs are opened relative to descriptors of ``blobs/`` and
    ``blobs/sha256/`` taken once with O_NOFOLLOW, so no symlink anywhere below the root can lead
    the reader out of the bundle, and O_NONBLOCK keeps a FIFO from blocking it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.blobs_fd = self._subdir(self.root_fd, "blobs")
        self.sha_fd = self._subdir(self.blobs_fd, "sha256") if self.blobs_fd is not None else None
        self.tuf_fd = self._subdir(self.root_fd, METADATA_DIR)

    def _subdir(self, parent: int, name: str) -> int | None:
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.close()
            raise Refused(f"{self.location}: {name} is not a plain directory ({e.strerror})") from e

    def read_small(self, name: str) -> bytes:
        return _read_bounded(self._regular(self.root_fd, name, name), name, self.location)

    def open_blob(self, digest: str) -> BinaryIO:
        hexdigest = check_digest(digest).removeprefix("sha256:")
        return self._regular(self.sha_fd, hexdigest, f"blobs/sha256/{hexdigest}")

    def blob_size(self, digest: str) -> int | None:
        st = self._lstat(digest)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else (-1 if st is not None else None)

    def blob_names(self) -> set[str]:
        return {f"sha256:{n}" for n in os.listdir(self.sha_fd)} if self.sha_fd is not None else set()

    def metadata_names(self) -> set[str]:
        return {n for n in os.listdir(self.tuf_fd) if METADATA_NAME.fullmatch(n)} if self.tuf_fd is not None else set()

    def open_metadata(self, name: str) -> BinaryIO:
        if not METADATA_NAME.fullmatch(name):
            raise Refused(f"{self.location}: {name[:80]!r} is not a metadata file name")
        return self._regular(self.tuf_fd, name, f"{METADATA_DIR}/{name}")

    def locate(self, digest: str) -> tuple[Path, int] | None:
        st = self._lstat(digest)
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:"), 0

    def _lstat(self, digest: str) -> os.stat_result | None:
        if self.sha_fd is None:
            return None
        try:
            return os.stat(check_digest(digest).removeprefix("sha256:"), dir_fd=self.sha_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _regular(self, directory: int | None, name: str, shown: str) -> BinaryIO:
        if directory is None:
            raise Refused(f"{self.location}: {shown} is missing")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
        except FileNotFoundError:
            raise Refused(f"{self.location}: {shown} is missing") from None
        except OSError as e:
            raise Refused(f"{self.location}: {shown} cannot be opened ({e.strerror})") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(f"{self.location}: {shown} is not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb", buffering=0)

    def close(self) -> None:
        for fd in (getattr(self, "sha_fd", None), getattr(self, "blobs_fd", None), getattr(self, "tuf_fd", None), self.root_fd):
            if fd is not None:
                os.close(fd)
        self.sha_fd = self.blobs_fd = self.tuf_fd = None


_TAR_DIRS = {"blobs", "blobs/sha256", "tuf"}
_TAR_FILES = {"oci-layout", "index.json"}
# beside the layout on a medium (see updater.medium): what it holds, checksums of every file, a note for people
MEDIUM_FILE, SUMS_FILE, NOTE_FILE = "sealift-medium.json", "SHA256SUMS", "README.txt"
MEDIUM_FILES = frozenset({MEDIUM_FILE, SUMS_FILE, NOTE_FILE})
MAX_TAR_MEMBERS = 20_000  # a member costs about 1 KiB of memory; bundles have a few hundred
MAX_TAR_EXTENSION = 64 << 10  # pax and GNU long-name headers are read whole by tarfile
_EXTENSION_TYPES = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses extension headers so large that tarfile would read gigabytes of metadata."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENSION_TYPES and self.size > MAX_TAR_EXTENSION:
            raise tarfile.HeaderError(f"a {self.size}-byte extension header")
        return super()._proc_member(tar)  # type: ignore[misc,no-any-return]


class _TarReader:
    def __init__(self, path: Path, *, strict: bool) -> None:
        self.location = str(path)
        self.strict = strict
        try:
            self.tar = tarfile.open(path, "r:", tarinfo=_BoundedTarInfo)  # noqa: SIM115 (closed by close())
        except (tarfile.TarError, OSError) as e:
            raise Refused(f"{path}: not an uncompressed tar file ({e})") from e
        try:
            self.members = self._index_members()
            if strict:
                self._check_end()
        except BaseException:
            self.tar.close()
            raise

    def _index_members(self) -> dict[str, tarfile.TarInfo]:
        members: dict[str, tarfile.TarInfo] = {}
        file_size = os.stat(self.location).st_size
        try:
            for count, info in enumerate(self.tar):
                if count >= MAX_TAR_MEMBERS:
                    raise Refused(f"{self.location}: more than {MAX_TAR_MEMBERS} entries in the tar file")
                if info.offset_data + info.size > file_size:
                    # tarfile reads a cut-off archive as a short one; the sizes tell the truth
                    raise Refused(f"{self.location}: tar file is truncated: {info.name[:200]!r} runs past its end")
                name = info.name.removeprefix("./").rstrip("/")
                if info.isdir() and name in (*_TAR_DIRS, "", "."):
                    continue
                known = name in _TAR_FILES or _BLOB_NAME.fullmatch(name) or _TAR_METADATA.fullmatch(name)
                if not info.isreg() or not (known or (not self.strict and name in MEDIUM_FILES)):
                    if not self.strict:
                        continue
                    kind = "entry" if info.isreg() else "link or special entry"
                    raise Refused(f"{self.location}: unexpected {kind} {info.name[:200]!r} in bundle tar")
                if name in members:
                    raise Refused(f"{self.location}: {name} appears twice in bundle tar")
                members[name] = info
        except tarfile.TarError as e:
            raise Refused(f"{self.location}: tar file is damaged or truncated ({e})") from e
        return members

    def _check_end(self) -> None:
        """The end-of-archive marker, then nothing but zero padding: the bundle is all there is.

        A copy cut off between members (or inside a header, which tarfile takes for the end)
        lacks the marker.
        """
        # two zero blocks, then padding to a record boundary: at most a record and a block more
        longest = 2 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE - tarfile.BLOCKSIZE
        self.tar.fileobj.seek(self.tar.offset)
        tail = self.tar.fileobj.read(longest + 1)
        if len(tail) > longest or tail.strip(b"\0"):
            if len(tail) < 2 * tarfile.BLOCKSIZE:
                raise Refused(f"{self.location}: tar file is truncated (it stops inside an entry's header)")
            raise Refused(f"{self.location}: data follows the end of the tar archive")
        if len(tail) < 2 * tarfile.BLOCKSIZE:
            raise Refused(f"{self.location}: tar file is truncated (it has no end-of-archive marker)")

    def read_small(self, name: str) -> bytes:
        return _read_bounded(self._open(name), name, self.location)

    def open_blob(self, digest: str) -> BinaryIO:
        return self._open(f"blobs/sha256/{check_digest(digest).removeprefix('sha256:')}")

    def blob_size(self, digest: str) -> int | None:
        info = self.members.get(f"blobs/sha256/{check_digest(digest).removeprefix('sha256:')}")
        return None if info is None else info.size

    def blob_names(self) -> set[str]:
        return {f"sha256:{name.rpartition('/')[2]}" for name in self.members if name.startswith("blobs/")}

    def metadata_names(self) -> set[str]:
        return {name.removeprefix(f"{METADATA_DIR}/") for name in self.members if name.startswith(f"{METADATA_DIR}/")}

    def open_metadata(self, name: str) -> BinaryIO:
        return self._open(f"{METADATA_DIR}/{name}")

    def locate(self, digest: str) -> tuple[Path, int] | None:
        info = self.members.get(f"blobs/sha256/{check_digest(digest).removeprefix('sha256:')}")
        if info is None or info.issparse():
            return None
        return Path(self.location), info.offset_data

    def _open(self, name: str) -> BinaryIO:
        """A stream of one member on its own file handle, so blobs can be read in parallel."""
        info = self.members.get(name)
        if info is None:
            raise Refused(f"{self.location}: {name} is missing")
        if info.issparse():
            raise Refused(f"{self.location}: {name} is a sparse tar member")
        raw = open(self.location, "rb", buffering=0)  # noqa: SIM115 (owned by the slice)
        raw.seek(info.offset_data)
        return _Slice(raw, info.size)  # type: ignore[return-value]

    def close(self) -> None:
        self.tar.close()


class _Slice(io.RawIOBase):
    """At most ``size`` bytes of a file, from its current position."""

    def __init__(self, raw: io.FileIO, size: int) -> None:
        self.raw, self.left = raw, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self.left]
        n = self.raw.readinto(view) or 0
        self.left -= n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def _read_bounded(stream: BinaryIO, name: str, location: str) -> bytes:
    with stream:
        data = stream.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise Refused(f"{location}: {name} is larger than {MAX_JSON_BYTES} bytes")
    return data
