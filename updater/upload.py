"""Sending a blob to a registry: in one request when it is small, in chunks a later run resumes when
it is large (OCI distribution's chunked upload: POST, then PATCH with ``Content-Range``, then PUT
with the digest).

A large upload's session (its location at the registry) is kept in a small file per blob under
``$SEALIFT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/sealift`` or ``~/.cache/sealift``), ``uploads/``.
When a run is cut off, the next one asks the registry how much of the blob it holds and sends only
the rest; the registry checks the whole blob's digest before it keeps it, so a resumed upload is
verified as a fresh one is. A session the registry no longer knows (expired, purged) starts over.

Each chunk is read whole from the source before it is sent, so a source that fails (a mirror sync
whose origin goes away, a disk error) leaves the registry at a chunk's end, where the next run goes
on. A connection to the registry cut in the middle of a chunk is another matter: the CNCF
distribution registry (2.8, the one Debian ships) then holds more bytes than its session's state
says and cancels the session when it is asked about it, so that upload starts over; registries that
answer the status request with what they hold (as the OCI distribution spec describes) resume.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING

from updater.content import Hashed
from updater.durable import replace_file
from updater.errors import ContentMismatch, DeliveryError
from updater.oci import Advance, Descriptor

if TYPE_CHECKING:
    from updater.registry import RegistryClient

__all__ = ["CHUNKED_FROM", "UploadSessions", "upload_blob", "upload_bytes"]

CHUNKED_FROM = 64 << 20  # a blob this large or larger goes in chunks that can be resumed
CHUNK_BYTES = 16 << 20  # bytes per PATCH, read whole from the source before it is sent (the memory an upload holds)
Opener = Callable[[int], AbstractContextManager[IO[bytes]]]  # the blob's bytes from an offset on


class UploadSessions:
    """Where large uploads are remembered between runs: one file per registry repository and blob."""

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            cache = os.environ.get("SEALIFT_CACHE_DIR") or os.path.join(
                os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sealift")
            root = Path(cache) / "uploads"
        self.root = root

    def _path(self, client: RegistryClient, digest: str) -> Path:
        return self.root / hashlib.sha256(f"{client.ref.host}/{client.ref.repository}@{digest}".encode()).hexdigest()

    def get(self, client: RegistryClient, digest: str) -> str | None:
        try:
            return self._path(client, digest).read_text().strip() or None
        except OSError:
            return None

    def put(self, client: RegistryClient, digest: str, location: str) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_file(self._path(client, digest), location.encode(), mode=0o600)
        except OSError:
            pass  # not remembered: a cut upload then starts over, which is all this costs

    def drop(self, client: RegistryClient, digest: str) -> None:
        self._path(client, digest).unlink(missing_ok=True)


def _read(stream: Hashed | _Counted, n: int, what: str) -> bytes:
    """The next ``n`` bytes of ``stream``; ContentMismatch when it ends before them."""
    pieces, left = [], n
    while left:
        data = stream.read(min(left, 1 << 20))
        if not data:
            raise ContentMismatch(f"{what} is shorter than its size; refused")
        pieces.append(data)
        left -= len(data)
    return b"".join(pieces)


def upload_bytes(client: RegistryClient, blob: Descriptor, data: bytes) -> None:
    """Send a small blob held in memory (a metadata file, a report)."""
    upload_blob(client, blob, lambda _: nullcontext(io.BytesIO(data)), lambda _: None)


def upload_blob(client: RegistryClient, blob: Descriptor, open_at: Opener, advance: Advance, *, what: str = "",
                sessions: UploadSessions | None = None) -> None:
    """Send ``blob`` (its bytes from ``open_at(offset)``, ``what`` naming where they come from) to the
    repository; the registry checks its digest."""
    named = f"{what}: blob {blob.digest}" if what else f"blob {blob.digest}"
    if blob.size < CHUNKED_FROM:
        with open_at(0) as stream:
            checked = Hashed(stream, digest=blob.digest, size=blob.size, what=named, advance=advance)
            _finish(client, client.start_upload(), blob, checked)
            checked.finish()
        return
    sessions = sessions or UploadSessions()
    location = sessions.get(client, blob.digest)
    offset = client.upload_offset(location) if location else None
    if location is None or offset is None or offset > blob.size:
        location, offset = client.start_upload(), 0
        sessions.put(client, blob.digest, location)
    advance(offset)  # what the registry holds already: not sent again
    try:
        with open_at(offset) as stream:
            # a fresh upload is hashed on the way (a source that changes is caught here); a resumed one is
            # checked by the registry, which keeps nothing whose bytes do not hash to the digest
            body: Hashed | _Counted = Hashed(stream, digest=blob.digest, size=blob.size, what=named, advance=advance) \
                if offset == 0 else _Counted(stream, advance)
            while offset < blob.size:
                n = min(CHUNK_BYTES, blob.size - offset)
                piece = _read(body, n, named)  # whole before it is sent: a source that fails sends no part of a chunk
                response = client.send("PATCH", location, body=piece, what=f"the upload of blob {blob.digest}",
                                       headers={"Content-Type": "application/octet-stream", "Content-Length": str(n),
                                                "Content-Range": f"{offset}-{offset + n - 1}"})
                with response:
                    if response.status_code == 416:  # the session holds other than it said: the next run starts over
                        sessions.drop(client, blob.digest)
                    if response.status_code != 202:
                        raise client.refusal(response, f"the upload of blob {blob.digest}")
                    moved_to = response.headers.get("Location", location)
                location = moved_to if moved_to.startswith("http") else f"{client.scheme}://{client.ref.host}{moved_to}"
                offset += n
                sessions.put(client, blob.digest, location)
            if isinstance(body, Hashed):
                body.finish()
            _finish(client, location, blob, b"")
    except ContentMismatch:
        sessions.drop(client, blob.digest)
        raise
    except DeliveryError as e:  # the session is kept: the next run sends the rest
        raise DeliveryError(f"{e.diagnostics()}; {blob.digest} was cut off: run again to send the rest") from e
    sessions.drop(client, blob.digest)


def _finish(client: RegistryClient, location: str, blob: Descriptor, body: Hashed | bytes) -> None:
    url = f"{location}{'&' if '?' in location else '?'}digest={blob.digest}"
    response = client.send("PUT", url, body=body, what=f"the upload of blob {blob.digest}",
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(blob.size if isinstance(body, Hashed) else len(body))})
    with response:
        if response.status_code != 201:
            raise client.refusal(response, f"the upload of blob {blob.digest}")


class _Counted:
    """A resumed upload's bytes, each piece told to ``advance``."""

    def __init__(self, stream: IO[bytes], advance: Advance) -> None:
        self.stream, self.advance = stream, advance

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.advance(len(data))
        return data
