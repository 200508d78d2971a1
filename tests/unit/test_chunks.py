"""Chunk deltas of large blobs (bundler/chunking.py cuts, updater/chunks.py rebuilds): what changed
is all that travels, the blob's digest stays its identity, and a delta that does not add up is
refused with nothing of it kept."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from bundler.chunking import AVERAGE, chunk_delta, cuts
from updater.chunks import MAGIC, PACK, RECORD, ChunkIndex, read_index, rebuild
from updater.errors import Refused

SIZE = 4 << 20


def digest(path: Path) -> str:
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, int]:
    """A base and a target that differs in its tail (5%), in scattered 16 KiB runs (1%), and by one insertion."""
    rng = random.Random(7)
    base = os.urandom(SIZE)
    target = bytearray(base)
    changed = int(SIZE * 0.05)
    target[SIZE - changed:] = os.urandom(changed)
    for _ in range(int(SIZE * 0.01) // (16 << 10)):
        at = rng.randrange(0, SIZE - changed - (16 << 10))
        target[at:at + (16 << 10)] = os.urandom(16 << 10)
        changed += 16 << 10
    target[1000:1000] = b"inserted" * 64
    changed += 512
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "target").write_bytes(bytes(target))
    return tmp_path / "base", tmp_path / "target", changed


def delta(pair: tuple[Path, Path, int], tmp_path: Path) -> tuple[bytes, Path]:
    base, target, _ = pair
    made = chunk_delta(base, target, tmp_path / "pack", base_digest=digest(base), target_digest=digest(target))
    return made.index, made.pack


def test_only_the_changed_chunks_travel_and_the_blob_is_rebuilt_byte_for_byte(pair: tuple[Path, Path, int], tmp_path: Path) -> None:
    base, target, changed = pair
    index_bytes, pack = delta(pair, tmp_path)
    index = read_index(index_bytes, "test delta")
    assert index.target.digest == digest(target) and index.pack.size == pack.stat().st_size
    assert changed <= pack.stat().st_size < changed * 1.3  # whole chunks around each change, nothing else
    out = tmp_path / "rebuilt"
    told: list[int] = []
    with open(base, "rb") as b, open(pack, "rb") as p:
        rebuild(index, b, p, out, what="test delta", advance=told.append)
    assert out.read_bytes() == target.read_bytes() and sum(told) == target.stat().st_size
    assert max(r.length for r in index if r.where == PACK) <= 2 * AVERAGE and not list(tmp_path.glob(".rebuild-*"))
    assert len(index.records) < 0.1 * len(cuts(target)) * RECORD.size  # runs of the base are one range each
    same = chunk_delta(base, base, tmp_path / "nothing", base_digest=digest(base), target_digest=digest(base))
    assert same.pack_size == 0 and same.reused == base.stat().st_size  # an unchanged blob moves only its index


def _header(index: bytes) -> tuple[dict, bytes]:  # type: ignore[type-arg]
    end = index.index(b"\n", len(MAGIC))
    return json.loads(index[len(MAGIC):end]), index[end + 1:]


def _with(index: bytes, edit: Callable[[dict], None]) -> bytes:  # type: ignore[type-arg]
    header, records = _header(index)
    edit(header)
    return MAGIC + json.dumps(header).encode() + b"\n" + records


@pytest.mark.parametrize(("damage", "message"), [
    (lambda i, p, b: (_with(i, lambda h: h["target"].update(size=h["target"]["size"] + 1)), p, b), "the chunks add up to"),
    (lambda i, p, b: (i[:-RECORD.size], p, b), "says"),
    (lambda i, p, b: (b"not an index", p, b), "not a Sealift chunk index"),
    (lambda i, p, b: (i[:len(MAGIC)] + b"{]\n", p, b), "header: not valid JSON"),
    (lambda i, p, b: (_with(i, lambda h: h["base"].update(digest="sha256:../../../etc/passwd")), p, b), "no valid base blob"),
    (lambda i, p, b: (_with(i, lambda h: h["target"].update(size=1e300)), p, b), "no valid target blob"),
    (lambda i, p, b: (_with(i, lambda h: h.update(chunks=True)), p, b), "no count of chunks"),
    (lambda i, p, b: (i[:len(MAGIC)] + b"[" * 2000 + b"]" * 2000 + b"\n", p, b), "header: "),
    (lambda i, p, b: (_with(i, lambda h: h["base"].update(size=10)), p, b), "lies outside its base or pack"),
    (lambda i, p, b: (i, p[:100] + bytes([p[100] ^ 1]) + p[101:], b), "of the pack does not match its digest"),
    (lambda i, p, b: (i, p, b[:SIZE // 3] + bytes([b[SIZE // 3] ^ 1]) + b[SIZE // 3 + 1:]), "a base other than the one the index"),
    (lambda i, p, b: (i, p, b + b"x"), "the base holds"),
    (lambda i, p, b: (_with(i, lambda h: h["target"].update(digest="sha256:" + "0" * 64)), p, b), "the rebuilt blob is"),
], ids=["sizes-do-not-add-up", "records-missing", "not-an-index", "bad-header", "a-digest-that-is-a-path", "a-float-size",
        "a-boolean-count", "deep-header", "outside-the-base", "pack-chunk-damaged",
        "another-base", "base-of-another-size", "target-digest-wrong"])
def test_a_delta_that_does_not_add_up_is_refused_and_nothing_is_kept(  # type: ignore[no-untyped-def]
        pair: tuple[Path, Path, int], tmp_path: Path, damage, message: str) -> None:
    base, _, _ = pair
    index_bytes, pack = delta(pair, tmp_path)
    index_bytes, pack_bytes, base_bytes = damage(index_bytes, pack.read_bytes(), base.read_bytes())
    (tmp_path / "damaged-pack").write_bytes(pack_bytes)
    (tmp_path / "damaged-base").write_bytes(base_bytes)
    out = tmp_path / "rebuilt"
    with pytest.raises(Refused, match=message):
        index: ChunkIndex = read_index(index_bytes, "test delta")
        with open(tmp_path / "damaged-base", "rb") as b, open(tmp_path / "damaged-pack", "rb") as p:
            rebuild(index, b, p, out, what="test delta")
    assert not out.exists() and not list(tmp_path.glob(".rebuild-*"))
