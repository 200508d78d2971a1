"""Content checked as it streams: the one hashed reader, compressed content, small JSON blobs.

Every byte Sealift takes from outside is read through :class:`Hashed`, which hashes and counts it,
refuses a stream that runs past its declared size at once (without reading the rest), and says
at the end whether the bytes were the ones their digest names. Compressed payloads are read
through :func:`zstd_reader` with a bounded window, so a hostile frame cannot make a reader
allocate hundreds of MiB. Nothing here holds a blob whole in memory but the small JSON ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol, cast

import zstandard

from updater.errors import ContentMismatch, Refused
from updater.oci import CHUNK, MAX_JSON_BYTES, Advance, Descriptor, canonical_json, json_object

__all__ = ["MAX_ZSTD_WINDOW", "Hashed", "checked_json", "copy_hashed", "drain", "read_json_blob", "read_small_blob", "zstd_reader"]

# Sealift writes level-3 frames (windows of at most 2 MiB); a larger window is refused
MAX_ZSTD_WINDOW = 8 << 20


class _Source(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Hashed:
    """Reads ``source`` through: hashed and counted, refused (ContentMismatch) as soon as it runs past
    ``size``, and checked against ``digest`` by :meth:`finish`. ``advance`` is told of every piece read.
    ``sha`` and ``done`` resume a hash over bytes read before (an interrupted download's)."""

    def __init__(self, source: _Source | IO[bytes] | None, *, digest: str, size: int, what: str,
                 advance: Advance | None = None, sha: Any = None, done: int = 0) -> None:
        self.source = source
        self.digest, self.size, self.what = digest, size, what
        self.advance = advance
        self.sha = sha or hashlib.sha256()
        self.done = done

    def read(self, n: int = CHUNK, /) -> bytes:
        assert self.source is not None
        want = CHUNK if n is None or n < 0 else n
        data = self.source.read(min(want, self.size + 1 - self.done))
        self.sha.update(data)
        self.done += len(data)
        if self.done > self.size:
            raise ContentMismatch(f"{self.what} is longer than its {self.size} bytes; refused")
        if self.advance is not None:
            self.advance(len(data))
        return data

    def __len__(self) -> int:  # what an upload still sends (requests reads the length from here)
        return self.size - self.done

    @property
    def actual(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"

    def matches(self) -> bool:
        return self.done == self.size and self.actual == self.digest

    def finish(self) -> None:
        """ContentMismatch unless exactly ``size`` bytes were read and they hash to ``digest``."""
        if not self.matches():
            raise ContentMismatch(f"{self.what} does not match its digest or size (got {self.actual}, {self.done} of "
                                  f"{self.size} bytes); refused, nothing kept")


def drain(stream: _Source) -> None:
    """Read ``stream`` to its end (a hashed reader then knows every byte)."""
    while stream.read(CHUNK):
        pass


def copy_hashed(source: IO[bytes], sink: Any | None, *, limit: int | None = None,
                progress: Advance | None = None) -> tuple[str, int]:
    """Copy ``source`` to ``sink`` (or nowhere) in chunks; return its sha256 digest and length.

    With ``limit``, reading stops one byte past it, so an over-long stream is detected without
    reading it all. Reads into one buffer: no allocation per chunk.
    """
    sha = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    readinto = getattr(source, "readinto", None)
    while limit is None or total <= limit:
        want = CHUNK if limit is None else min(CHUNK, limit + 1 - total)
        if readinto is not None:
            n = readinto(view[:want])
            chunk = view[:n]
        else:
            data = source.read(want)
            n, chunk = len(data), memoryview(data)
        if not n:
            break
        sha.update(chunk)
        if sink is not None:
            sink.write(chunk)
        total += n
        if progress is not None:
            progress(n)
    return f"sha256:{sha.hexdigest()}", total


@contextmanager
def zstd_reader(stored: _Source, what: str) -> Iterator[_Source]:
    """The decompressed content of ``stored``; Refused naming ``what`` for data that is not valid zstd
    or asks for a window larger than Sealift writes."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
    try:
        with decompressor.stream_reader(cast(IO[bytes], stored), read_size=CHUNK, closefd=False) as plain:
            yield _Guarded(plain, what)
    except zstandard.ZstdError as e:
        raise Refused(f"{what} is not valid zstd data ({e})") from e


class _Guarded:
    def __init__(self, plain: Any, what: str) -> None:
        self.plain, self.what = plain, what

    def read(self, n: int = CHUNK, /) -> bytes:
        try:
            data: bytes = self.plain.read(n)
        except zstandard.ZstdError as e:
            raise Refused(f"{self.what} is not valid zstd data ({e})") from e
        return data


def checked_json(body: bytes, descriptor: Descriptor, what: str) -> bytes:
    """``body`` if it is the manifest ``descriptor`` names, byte for byte."""
    actual = f"sha256:{hashlib.sha256(body).hexdigest()}"
    if actual != descriptor.digest or len(body) != descriptor.size:
        raise ContentMismatch(f"{what}: manifest {descriptor.digest} does not match its digest or size (got {actual}, "
                            f"{len(body)} bytes); refused")
    return body


def read_small_blob(store: Any, blob: Descriptor, limit: int, what: str) -> bytes:
    """The bytes of a blob of at most ``limit`` bytes from ``store`` (anything with ``open_blob``), read
    whole and checked against its digest and size."""
    if blob.size > limit:
        raise Refused(f"{what} {blob.digest} is {blob.size} bytes, more than {limit}")
    with store.open_blob(blob.digest) as stream:
        data: bytes = stream.read(blob.size + 1)
    if len(data) != blob.size or f"sha256:{hashlib.sha256(data).hexdigest()}" != blob.digest:
        raise ContentMismatch(f"{what} ({blob.digest[:19]}…) is corrupt or truncated")
    return data


def read_json_blob(reader: Any, blob: Descriptor, what: str, *, canonical: bool = False) -> dict[str, Any]:
    """A small JSON blob (a manifest, an index, a descriptor), checked against its descriptor and parsed;
    with ``canonical``, its bytes must be the canonical JSON of what they parse to (one spelling per document)."""
    data = read_small_blob(reader, blob, MAX_JSON_BYTES, f"{reader.location}: {what}")
    parsed = json_object(data, f"{reader.location}: {what}")
    if canonical and canonical_json(parsed) != data:
        raise Refused(f"{reader.location}: {what} ({blob.digest[:19]}…) is not canonical JSON (sorted keys, no whitespace)")
    return parsed
