"""The chunk delta of one large blob against a base (see :mod:`updater.chunks`, which rebuilds it).

Both blobs are cut by content (FastCDC: a cut falls where the bytes say, so an insertion or a
change moves only the cuts around it), each target chunk is looked up by its sha256 among the
base's, and the chunks the base lacks go, in order, into the pack. The chunk sizes (2, 4 and
8 KiB: least, average, most) were chosen by measurement (docs/benchmarks.md, "Deltas inside
blobs"): 1% of a blob changed in scattered 64 KiB runs moves 1.09x the changed bytes at a 4 KiB
average, 1.19x at 8 KiB and 2.5x at 64 KiB. The index names each new chunk (29 bytes) and each run
of chunks the base holds in the same order as one range, so it stays small when little changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fastcdc import fastcdc

from updater.chunks import BASE, MAGIC, PACK, RECORD
from updater.errors import DeviceFault, InputError

__all__ = ["AVERAGE", "ChunkDelta", "chunk_delta", "cuts"]

LEAST, AVERAGE, MOST = 2048, 4096, 8192
_NO_DIGEST = bytes(16)  # a base range is covered by the whole blob's digest


@dataclass(frozen=True)
class ChunkDelta:
    """What :func:`chunk_delta` wrote: the index (bytes) and the pack (a file), and how much of the
    target the base already holds."""

    index: bytes
    pack: Path
    pack_digest: str
    pack_size: int
    reused: int
    chunks: int


def cuts(path: Path) -> list[tuple[int, int, bytes]]:
    """(offset, length, sha256) of each chunk of the file at ``path``."""
    if path.stat().st_size == 0:
        return []
    return [(c.offset, c.length, bytes.fromhex(c.hash))
            for c in fastcdc(str(path), min_size=LEAST, avg_size=AVERAGE, max_size=MOST, fat=False, hf=hashlib.sha256)]


def chunk_delta(base: Path, target: Path, pack: Path, *, base_digest: str, target_digest: str) -> ChunkDelta:
    """Cut ``base`` and ``target``, write the chunks the base lacks to ``pack`` and return the index."""
    try:
        known = {digest: (offset, length) for offset, length, digest in cuts(base)}
        records, packed, reused = [], 0, 0
        run: tuple[int, int] | None = None  # the base range the target's last chunks came from
        pack_sha = hashlib.sha256()
        with open(target, "rb") as source, open(pack, "wb") as out:
            for offset, length, digest in cuts(target):
                found = known.get(digest)
                if found is not None and found[1] == length:
                    if run is not None and run[0] + run[1] == found[0]:
                        run = (run[0], run[1] + length)  # the base runs on: one range
                    else:
                        if run is not None:
                            records.append(RECORD.pack(BASE, run[0], run[1], _NO_DIGEST))
                        run = found
                    reused += length
                    continue
                if run is not None:
                    records.append(RECORD.pack(BASE, run[0], run[1], _NO_DIGEST))
                    run = None
                source.seek(offset)
                data = source.read(length)
                out.write(data)
                pack_sha.update(data)
                records.append(RECORD.pack(PACK, packed, length, digest[:16]))
                packed += length
            if run is not None:
                records.append(RECORD.pack(BASE, run[0], run[1], _NO_DIGEST))
    except OSError as e:
        raise DeviceFault(f"chunk delta of {target} on {base}: {e.strerror or e}") from e
    except ValueError as e:
        raise InputError(f"chunk delta of {target} on {base}: {e}") from e
    pack_digest = f"sha256:{pack_sha.hexdigest()}"
    header = {"target": {"digest": target_digest, "size": target.stat().st_size},
              "base": {"digest": base_digest, "size": base.stat().st_size},
              "pack": {"digest": pack_digest, "size": packed}, "chunks": len(records)}
    index = MAGIC + json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + b"".join(records)
    return ChunkDelta(index=index, pack=pack, pack_digest=pack_digest, pack_size=packed, reused=reused, chunks=len(records))
