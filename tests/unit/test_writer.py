from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundler.writer import open_writer
from updater.errors import Refused
from updater.layout import open_layout
from updater.oci import Descriptor

TOP = Descriptor(media_type="application/vnd.oci.image.index.v1+json", digest="sha256:" + "0" * 64, size=2)


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.mark.parametrize("tar", [False, True], ids=["dir", "tar"])
def test_each_blob_is_stored_once_whichever_way_it_arrives(tmp_path: Path, tar: bool) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 10_000)
    temp = tmp_path / "temp"
    temp.mkdir()
    writer = open_writer(temp, tar=tar, mtime=0)
    a = writer.add_file(source)
    b = writer.add_stream(io.BytesIO(source.read_bytes()))
    c = writer.add_bytes(source.read_bytes())
    small = writer.add_bytes(b"{}")
    writer.finish(TOP)
    assert a == b == c == (digest(source.read_bytes()), 70_000)
    with open_layout(writer.product) as reader:
        assert reader.blob_size(a[0]) == 70_000 and reader.blob_size(small[0]) == 2
        with reader.open_blob(a[0]) as stream:
            assert stream.read() == source.read_bytes()
    if tar:
        with tarfile.open(writer.product) as archive:
            names = archive.getnames()
        assert names.count(f"blobs/sha256/{a[0].removeprefix('sha256:')}") == 1
        assert names[-2:] == ["index.json", "oci-layout"]
        listing = subprocess.run(["tar", "-tf", str(writer.product)], capture_output=True, text=True, check=True)
        assert [n.rstrip("/") for n in listing.stdout.split()] == names


@pytest.mark.parametrize("tar", [False, True], ids=["dir", "tar"])
def test_a_stream_that_does_not_match_leaves_nothing(tmp_path: Path, tar: bool) -> None:
    writer = open_writer(tmp_path, tar=tar, mtime=0)
    good = writer.add_bytes(b"kept")
    wrong = Descriptor(media_type="x", digest=digest(b"expected"), size=8)
    with pytest.raises(Refused, match="expected 8 bytes"):
        writer.add_stream(io.BytesIO(b"tampered"), expect=wrong, what="layer")
    assert not writer.has(wrong.digest)
    writer.finish(TOP)
    with open_layout(writer.product) as reader:
        assert reader.blob_size(good[0]) == 4
        assert reader.blob_size(wrong.digest) is None
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("incoming")]
    assert leftovers == []


def test_kernel_copy_of_a_blob_inside_an_archive(tmp_path: Path) -> None:
    """A blob copied from an offset inside a tar (an image archive source) keeps its bytes."""
    payload = b"layer bytes " * 5000
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as out:
        info = tarfile.TarInfo("blobs/sha256/x")
        info.size = len(payload)
        out.addfile(info, io.BytesIO(payload))
    with tarfile.open(archive) as t:
        offset = t.getmember("blobs/sha256/x").offset_data
    temp = tmp_path / "temp"
    temp.mkdir()
    writer = open_writer(temp, tar=True, mtime=0)
    expect = Descriptor(media_type="x", digest=digest(payload), size=len(payload))
    writer.add_file(archive, offset=offset, expect=expect)
    writer.finish(TOP)
    with open_layout(writer.product) as reader, reader.open_blob(expect.digest) as stream:
        assert stream.read() == payload


@pytest.mark.parametrize("payload", range(0, 10_240, 512))  # every position of the end within a record
def test_tar_bundles_of_every_size_end_where_the_reader_expects(tmp_path: Path, payload: int) -> None:
    """The end marker plus record padding can exceed one record; no size may read as trailing data."""
    temp = tmp_path / "temp"
    temp.mkdir()
    writer = open_writer(temp, tar=True, mtime=0)
    writer.add_bytes(b"x" * payload)
    writer.finish(TOP)
    with open_layout(writer.product) as reader:
        assert reader.read_small("oci-layout")
