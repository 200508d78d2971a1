"""A 1 GiB blob (a large model) cut off mid-way on real registries, pushed and pulled: a push whose
source fails resumes where the registry's upload stands, sending only the rest; one cut on the
registry's side starts over cleanly (the CNCF distribution registry cancels a session cut mid-chunk:
updater/upload.py); a pull resumes with a ranged request for what did not arrive."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.realparts import CuttingProxy, Registry, RegistryFactory
from updater.errors import DeliveryError
from updater.oci import Descriptor
from updater.registry import Retry, connect
from updater.transfer import DirectoryEndpoint, RegistryEndpoint
from updater.upload import UploadSessions

pytestmark = pytest.mark.registry
GIB = 1 << 30


@pytest.fixture(scope="module")
def gib(tmp_path_factory: pytest.TempPathFactory) -> tuple[DirectoryEndpoint, Descriptor]:
    """A layout holding one 1 GiB blob that does not compress."""
    source = DirectoryEndpoint(tmp_path_factory.mktemp("gib"), what="the model")
    source.prepare()
    block, sha = os.urandom(1 << 20), hashlib.sha256()
    writing = source.blobs / "writing"
    with open(writing, "wb") as out:
        for i in range(GIB >> 20):
            piece = i.to_bytes(8, "big") + block[8:]  # no two MiB alike
            sha.update(piece)
            out.write(piece)
    writing.rename(source.blobs / sha.hexdigest())
    return source, Descriptor(media_type="application/octet-stream", digest=f"sha256:{sha.hexdigest()}", size=GIB)


def endpoint(address: str) -> RegistryEndpoint:
    """A new client each time, as each run of `sealift push` or `mirror sync` has."""
    return RegistryEndpoint(connect(f"{address}/large", plain_http=True, what="registry", retry=Retry(delays=())))


def test_a_1_gib_blob_cut_off_mid_way_resumes_without_moving_what_arrived_again(
        gib: tuple[DirectoryEndpoint, Descriptor], registry: Registry, registry_factory: RegistryFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    layout, blob = gib
    monkeypatch.setenv("SEALIFT_CACHE_DIR", str(tmp_path / "cache"))
    mirror = registry_factory()
    origin_link, mirror_link = CuttingProxy(registry.address), CuttingProxy(mirror.address)
    try:
        # a mirror sync whose origin drops mid-way: the mirror keeps whole chunks, the next run sends the rest
        assert endpoint(registry.address).put_blob(blob, layout, lambda _: None)
        origin_link.cut_after(600 << 20)
        with pytest.raises(DeliveryError, match="the connection was lost while reading blob"):
            endpoint(mirror_link.address).put_blob(blob, endpoint(origin_link.address), lambda _: None)
        again = endpoint(mirror_link.address)
        location = UploadSessions().get(again.client, blob.digest)
        held = again.client.upload_offset(location) if location else None
        assert held is not None and 0 < held < GIB  # whole chunks kept, and the session remembered
        before, told = mirror_link.sent, []
        assert again.put_blob(blob, endpoint(origin_link.address), told.append)
        assert mirror_link.sent - before < GIB - held + (1 << 20)  # the rest, and requests' headers: nothing twice
        assert told[0] == held and sum(told) == GIB and again.client.has_blob(blob.digest)
        assert UploadSessions().get(again.client, blob.digest) is None  # a finished session is forgotten
        # the link to the registry cut in the middle of a chunk: the next run starts over, and ends right
        fresh = RegistryEndpoint(connect(f"{mirror_link.address}/other", plain_http=True, what="mirror", retry=Retry(delays=())))
        mirror_link.cut_after(300 << 20, requests=True)
        with pytest.raises(DeliveryError, match=f"{blob.digest} was cut off: run again to send the rest"):
            fresh.put_blob(blob, layout, lambda _: None)
        retried = RegistryEndpoint(connect(f"{mirror.address}/other", plain_http=True, what="mirror", retry=Retry(delays=())))
        assert retried.put_blob(blob, layout, lambda _: None) and retried.client.has_blob(blob.digest)
        # a pull cut off mid-way resumes with a ranged request for the rest only
        pulled = DirectoryEndpoint(tmp_path / "pulled")
        pulled.prepare()
        origin_link.cut_after(500 << 20)
        with pytest.raises(DeliveryError, match="run again to resume"):
            pulled.put_blob(blob, endpoint(origin_link.address), lambda _: None)
        (partial,) = pulled.blobs.glob(".partial-*")
        arrived = partial.stat().st_size
        assert 0 < arrived < GIB
        assert pulled.put_blob(blob, endpoint(origin_link.address), lambda _: None)
        assert pulled.path(blob.digest).stat().st_size == GIB
        ranged = [r for r in registry.requests() if r.blob == blob.digest and r.method == "GET" and r.status == 206]
        assert [r.bytes for r in ranged] == [GIB - held, GIB - arrived]  # the sync's resumed read, then the pull's
    finally:
        origin_link.close()
        mirror_link.close()
