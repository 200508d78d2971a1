"""A large blob rebuilt from a base the device holds and the chunks it lacks.

A chunk delta of one blob (a retrained model, a layer with one file changed) is two blobs: a chunk
index and a pack of the new chunks. The index lists the target blob's chunks in order, each
either a range of the base blob or the next chunk of the pack, with the first 16 bytes of the
chunk's sha256::

    sealift-chunks/1\\n
    {"target": {"digest", "size"}, "base": {"digest", "size"}, "pack": {"digest", "size"}, "chunks": N}\\n
    N records of 29 bytes: where (0 base, 1 pack), offset (u64), length (u32), sha256[:16]

A pack record is one chunk (at most 1 MiB) and names its chunk's digest; a base record is a range of
the base, as long as the chunks it covers run on in the base (its digest field is zero).

The target's sha256 stays its identity: :func:`rebuild` streams the chunks into a partial file,
checks each pack chunk as it goes (unless the pack, a blob of its own, was checked by its digest
when it arrived, as :mod:`updater.deltas` does) and the whole blob's digest at the end, and only
then names the file by its digest; anything that does not add up (an index whose chunks do not make the target's
size, a chunk past the end of its base or pack, a pack chunk whose digest is wrong, a base other
than the one the index names, a rebuilt blob whose digest is wrong) is Refused and nothing of it
is kept. The base is a blob of the device's store, named by its digest and checked when it
arrived, so its chunks are not hashed one by one: the whole blob's digest covers them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeGuard

from updater.durable import fsync_dir
from updater.errors import DeviceFault, Refused
from updater.oci import Advance, parse_json

__all__ = ["BASE", "MAGIC", "MAX_CHUNK", "PACK", "RECORD", "ChunkIndex", "Record", "read_index", "rebuild"]

MAGIC = b"sealift-chunks/1\n"
RECORD = struct.Struct(">BQI16s")
BASE, PACK = 0, 1
MAX_CHUNK = 1 << 20  # no chunk is larger: what a rebuild holds in memory at once
_MAX_HEADER = 4096
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PIECE = 4 << 20  # copied, then read back and hashed, at once


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class Record:
    where: int
    offset: int
    length: int
    short_hash: bytes


@dataclass(frozen=True)
class ChunkIndex:
    """A read, consistent chunk index: the target, base and pack blobs, and the records."""

    target: Blob
    base: Blob
    pack: Blob
    records: bytes

    def __iter__(self) -> Iterator[Record]:
        for where, offset, length, short in RECORD.iter_unpack(self.records):
            yield Record(where, offset, length, short)


def read_index(data: bytes, what: str) -> ChunkIndex:
    """The index in ``data``, checked to add up; Refused, naming ``what``, when it does not."""
    if not data.startswith(MAGIC):
        raise Refused(f"{what}: not a Sealift chunk index")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end < 0:
        raise Refused(f"{what}: the chunk index has no header")
    header = parse_json(data[len(MAGIC):end], f"{what}: the chunk index header")
    target, base, pack = (_blob(header, key, what) for key in ("target", "base", "pack"))
    count = header.get("chunks")
    if not _whole(count):
        raise Refused(f"{what}: the chunk index header names no count of chunks")
    records = data[end + 1:]
    if count < 0 or len(records) != count * RECORD.size:
        raise Refused(f"{what}: the chunk index says {count} chunks and holds {len(records) / RECORD.size:g}")
    index = ChunkIndex(target=target, base=base, pack=pack, records=records)
    total = packed = 0
    for i, r in enumerate(index):
        size = base.size if r.where == BASE else pack.size if r.where == PACK else -1
        longest = MAX_CHUNK if r.where == PACK else target.size
        if size < 0 or not 0 < r.length <= longest or r.offset + r.length > size or (r.where == PACK and r.offset != packed):
            raise Refused(f"{what}: chunk {i} of the index lies outside its base or pack, or out of order")
        total += r.length
        packed += r.length if r.where == PACK else 0
    if total != target.size or packed != pack.size:
        raise Refused(f"{what}: the chunks add up to {total} bytes ({packed} from the pack), not the blob's {target.size} "
                      f"({pack.size})")
    return index


def _blob(header: object, key: str, what: str) -> Blob:
    """The header's ``key`` blob: a sha256 digest (it names files: nothing else passes) and a size."""
    entry = header.get(key) if isinstance(header, dict) else None
    digest, size = (entry.get("digest"), entry.get("size")) if isinstance(entry, dict) else (None, None)
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or not _whole(size):
        raise Refused(f"{what}: the chunk index header names no valid {key} blob (a sha256 digest and a size)")
    return Blob(digest, size)


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def rebuild(index: ChunkIndex, base: IO[bytes], pack: IO[bytes], out: Path, *, what: str, pack_checked: bool = False,
            advance: Advance = lambda _: None) -> None:
    """Write the target blob to ``out`` from ``base`` and ``pack`` (open files), streaming; ``out``
    exists only when the blob's digest is right (a partial file beside it meanwhile).

    The kernel copies the ranges (``copy_file_range``, as ``cp`` does) while a second thread reads
    back each piece once it is written, and hashes it: the digest checked is that of the bytes
    kept, and hashing runs beside the copy instead of after it. Each pack chunk is checked against
    its own digest too, unless ``pack_checked`` (the pack is a blob whose digest was checked when it
    arrived)."""
    if os.fstat(base.fileno()).st_size != index.base.size:
        raise Refused(f"{what}: the base holds {os.fstat(base.fileno()).st_size} bytes, not the {index.base.size} of "
                      f"{index.base.digest} the index names")
    partial = out.with_name(f".rebuild-{out.name}")  # not a download's .partial-: nothing resumes from it
    try:
        with open(partial, "w+b") as written, ThreadPoolExecutor(1, thread_name_prefix="rebuild-check") as checker:
            progress = _Progress()
            checked = checker.submit(_check_written, index, written.fileno(), progress, pack_checked=pack_checked, what=what)
            try:
                at = 0
                for i, (where, offset, length, _) in enumerate(_spans(index, merge_pack=pack_checked)):
                    source = base.fileno() if where == BASE else pack.fileno()
                    end = at + length
                    while at < end:  # a piece at a time
                        copied = _copy(source, written.fileno(), min(end - at, _PIECE), offset + length - (end - at), at)
                        if not copied:
                            raise Refused(f"{what}: the {'base' if where == BASE else 'pack'} ends before the index says "
                                          f"(piece {i})")
                        at += copied
                        progress.reached(at)
                        advance(copied)
                    if checked.done():
                        checked.result()  # a refusal found already: stop here
                os.fsync(written.fileno())
            except BaseException:
                progress.reached(-1)  # the checker stops too
                raise
            digest = checked.result()
        if digest != index.target.digest:
            raise Refused(f"{what}: the rebuilt blob is {digest}, not {index.target.digest} (a base other than the one the "
                          "index names, or a damaged pack)")
        os.rename(partial, out)
        fsync_dir(out.parent)
    except Refused:
        partial.unlink(missing_ok=True)
        raise
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise DeviceFault(f"{what}: cannot write the rebuilt blob {out} ({e.strerror or e})") from e
    except BaseException:
        partial.unlink(missing_ok=True)  # (an interrupt, a bug): nothing half-made is left either
        raise


class _Progress:
    """How far the copy has written (-1: it stopped), for the thread that checks what it wrote."""

    def __init__(self) -> None:
        self._done = 0
        self._moved = threading.Condition()

    def reached(self, offset: int) -> None:
        with self._moved:
            self._done = offset
            self._moved.notify()

    def wait(self, offset: int) -> bool:
        """Wait until ``offset`` bytes are written; False if the copy stopped first."""
        with self._moved:
            self._moved.wait_for(lambda: self._done < 0 or self._done >= offset)
            return self._done >= offset


def _check_written(index: ChunkIndex, fd: int, progress: _Progress, *, pack_checked: bool, what: str) -> str:
    """The sha256 of what the copy writes to ``fd``, read back a piece behind it; each pack chunk checked
    against its short digest on the way, unless ``pack_checked``."""
    whole = hashlib.sha256()
    at = 0
    for i, (_, _, length, short) in enumerate(_spans(index, merge_pack=pack_checked)):
        pieces = [length] if short is not None else [min(_PIECE, length - o) for o in range(0, length, _PIECE)]
        for piece in pieces:
            if not progress.wait(at + piece):
                return ""  # the copy stopped: its own error says why
            data = os.pread(fd, piece, at)
            if len(data) != piece:
                raise Refused(f"{what}: the rebuilt blob is shorter than its index says")
            if short is not None and hashlib.sha256(data).digest()[:16] != short:
                raise Refused(f"{what}: a chunk of the pack does not match its digest (piece {i})")
            whole.update(data)
            at += piece
    return f"sha256:{whole.hexdigest()}"


def _copy(source: int, dest: int, length: int, offset: int, at: int) -> int:
    """Copy up to ``length`` bytes at ``offset`` of ``source`` to ``at`` of ``dest``; the count copied (0 at its end)."""
    try:
        return os.copy_file_range(source, dest, length, offset, at)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    data = os.pread(source, length, offset)  # file systems that cannot copy between these files
    return os.pwrite(dest, data, at) if data else 0


def _spans(index: ChunkIndex, *, merge_pack: bool) -> Iterator[tuple[int, int, int, bytes | None]]:
    """(where, offset, length, short digest) to copy in order: each record, a pack chunk with its short
    digest to check, or with ``merge_pack`` runs of pack chunks as one (nothing to check)."""
    run: list[int] | None = None
    for r in index:
        if r.where == PACK and merge_pack:
            if run is not None:
                run[2] += r.length
            else:
                run = [PACK, r.offset, r.length]
            continue
        if run is not None:
            yield run[0], run[1], run[2], None
            run = None
        yield r.where, r.offset, r.length, r.short_hash if r.where == PACK else None
    if run is not None:
        yield run[0], run[1], run[2], None
