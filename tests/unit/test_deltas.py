"""Chunk deltas of whole bundles, without a registry: which blobs pair up, a delta medium that carries
a retrained model as its changed chunks, and the device's store rebuilding it from its own base or
refusing what does not add up (registries and mirror chains: tests/integration/test_deltas.py)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.deltas import make_delta, open_base, pairs
from bundler.export import export
from bundler.spec import load_spec
from tests.builders import project, take
from updater.chunks import MAGIC
from updater.deltas import INDEX_MEDIA, LARGE, PACK_MEDIA, PACKS, read_deltas
from updater.errors import Refused
from updater.layout import open_layout
from updater.medium import check_medium
from updater.profiles import builtin_profile_dir, load_profiles
from updater.store import BundleStore
from updater.transfer import DirectoryEndpoint, ReaderEndpoint, walk

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]
MODEL = LARGE + (4 << 20)
TAIL = 1 << 20  # what 1.1.0 changes at the end of the model, as a retrained head would


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """demo 1.0.0, 1.1.0 (the model's last MiB changed) and 1.2.0 (a model of all new bytes), for x86_64-cpu."""
    root = tmp_path_factory.mktemp("chunked")
    model = bytearray(os.urandom(MODEL))
    spec_path = project(root / "src", model_bytes=bytes(model))
    built: dict[str, Path] = {}
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        if version == "1.1.0":
            model[-TAIL:] = os.urandom(TAIL)
            (root / "src/models/int8.bin").write_bytes(bytes(model))
        if version == "1.2.0":
            (root / "src/models/int8.bin").write_bytes(os.urandom(MODEL))
        spec_path.write_text(spec_path.read_text().replace("version: 1.2.0", f"version: {version}", 1)
                             .replace("version: 1.0.0", f"version: {version}", 1).replace("version: 1.1.0", f"version: {version}", 1))
        spec = load_spec(spec_path)
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    return built


def model_digest(bundle: Path) -> str:
    return "sha256:" + max((bundle / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size).name


def graph_of(bundle: Path, stack: ExitStack) -> tuple:  # type: ignore[type-arg]
    reader = stack.enter_context(open_layout(bundle))
    source = ReaderEndpoint(reader)
    top = next(iter(json.loads((bundle / "index.json").read_text())["manifests"]))
    from updater.oci import Descriptor
    return walk(Descriptor.from_json(top, where="index.json"), source), source


def test_the_model_pairs_with_the_bases_model_and_its_delta_holds_only_the_changed_chunks(
        releases: dict[str, Path], tmp_path: Path) -> None:
    with ExitStack() as stack:
        base = open_base(str(releases["1.0.0"]), plain_http=False, stack=stack)
        graph, source = graph_of(releases["1.1.0"], stack)
        ((target, old),) = pairs(graph, base.graph)  # the model, and nothing small
        assert (target.digest, old.digest) == (model_digest(releases["1.1.0"]), model_digest(releases["1.0.0"]))
        layout = DirectoryEndpoint(tmp_path / "delta")
        layout.prepare()
        built = make_delta(graph, source, base, layout, tmp_path / "scratch")
        assert built is not None and built.targets == [target.digest] and built.whole == MODEL
        assert TAIL <= built.moved <= TAIL * 1.15 + 64 * 1024  # the changed bytes, and an index
        assert [b.media_type for b in built.blobs[1:]] == [INDEX_MEDIA, PACK_MEDIA]
        assert not (tmp_path / "scratch").exists()  # the copies it compared are gone
        # a model that changed entirely gains nothing: no delta, the blob travels whole
        whole, whole_source = graph_of(releases["1.2.0"], stack)
        assert make_delta(whole, whole_source, base, layout, tmp_path / "scratch2") is None


def test_a_delta_medium_carries_the_changed_chunks_and_the_device_rebuilds_the_model_from_its_base(
        releases: dict[str, Path], tmp_path: Path) -> None:
    medium = tmp_path / "stick"
    report = export([releases["1.1.0"]], medium, bases=(str(releases["1.0.0"]),))
    (entry,) = report.bundles
    assert entry.chunks is not None and check_medium(medium).problems == []
    held = {p.name for p in (medium / "blobs/sha256").iterdir()}
    assert model_digest(releases["1.1.0"]).removeprefix("sha256:") not in held
    assert sum(p.stat().st_size for p in (medium / "blobs/sha256").iterdir()) < TAIL * 1.15 + (256 << 10)
    listed = json.loads((medium / "sealift-medium.json").read_text())["bundles"][0]
    assert listed["chunks"]["digest"] == entry.chunks.digest and listed["blobs_from_base"] == entry.blobs_from_base

    store = BundleStore(tmp_path / "device")
    take(store, releases["1.0.0"], CPU)
    rebuilt = take(store, medium, CPU)
    model = rebuilt / "blobs/sha256" / model_digest(releases["1.1.0"]).removeprefix("sha256:")
    assert model.read_bytes() == (releases["1.1.0"] / "blobs/sha256" / model.name).read_bytes()
    assert not [p for p in (rebuilt / "blobs/sha256").iterdir() if p.name not in
                {q.name for q in (releases["1.1.0"] / "blobs/sha256").iterdir()}]  # no pack, no partial file left


def _damage_pack(medium: Path) -> None:
    """Rewrite the pack with other bytes and give every listing what it expects, as a forger would."""
    from bundler.export import _write_sums
    listed = json.loads((medium / "sealift-medium.json").read_text())["bundles"][0]["chunks"]["digest"]
    manifest = json.loads((medium / "blobs/sha256" / listed.removeprefix("sha256:")).read_text())
    pack = next(layer for layer in manifest["layers"] if layer["mediaType"] == PACK_MEDIA)
    path = medium / "blobs/sha256" / pack["digest"].removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _write_sums(medium)


def test_a_damaged_pack_is_refused_and_nothing_of_it_is_kept(releases: dict[str, Path], tmp_path: Path) -> None:
    medium = tmp_path / "stick"
    export([releases["1.1.0"]], medium, bases=(str(releases["1.0.0"]),))
    _damage_pack(medium)
    store = BundleStore(tmp_path / "device")
    kept = take(store, releases["1.0.0"], CPU)
    with pytest.raises(Refused, match=r"there only as a chunk delta, which could not be used: .*does not match its digest"):
        take(store, medium, CPU)
    assert sorted(p.name for p in store.root.iterdir() if not p.name.startswith(".")) == [kept.name]
    assert not list(store.root.glob(".incoming-*"))


def test_a_delta_on_another_base_or_not_adding_up_is_passed_over(releases: dict[str, Path], tmp_path: Path) -> None:
    from updater.errors import SealiftError
    from updater.oci import Descriptor

    medium = tmp_path / "stick"
    export([releases["1.1.0"]], medium, bases=(str(releases["1.0.0"]),))
    listed = json.loads((medium / "sealift-medium.json").read_text())["bundles"][0]["chunks"]
    manifest = Descriptor.from_json(listed, where="test")
    target = model_digest(releases["1.1.0"])
    wanted = {target: Descriptor(media_type="x", digest=target, size=MODEL)}
    said: list[SealiftError] = []
    with open_layout(medium) as reader:
        source = ReaderEndpoint(reader)
        assert set(read_deltas(source, [manifest], wanted, warn=pytest.fail)) == {target}
        assert read_deltas(source, [manifest], wanted, warn=pytest.fail, has_base=lambda _: False) == {}  # a base not held
        other_size = {target: Descriptor(media_type="x", digest=target, size=MODEL + 1)}
        assert read_deltas(source, [manifest], other_size, warn=said.append) == {}
        assert isinstance(said[0], Refused) and "names another blob, other sizes or a pack" in str(said[0])
        assert read_deltas(source, [manifest, manifest, manifest], wanted, warn=pytest.fail).keys() == {target}  # read once
    # indexes past what a device reads in all: said, and the blob travels whole; nothing raised
    with open_layout(medium) as reader, pytest.MonkeyPatch.context() as patch:
        patch.setattr("updater.deltas.MAX_INDEX", 1000)
        said.clear()
        assert read_deltas(ReaderEndpoint(reader), [manifest], wanted, warn=said.append) == {}
        assert "larger than 1000 bytes in all" in str(said[0])
    # an index that is cut short: refused by its reader, said, and passed over
    index = next(p for p in (medium / "blobs/sha256").iterdir() if p.read_bytes().startswith(MAGIC))
    broken = tmp_path / "broken"
    shutil.copytree(medium, broken)
    (broken / "blobs/sha256" / index.name).write_bytes(index.read_bytes()[:-29])
    with open_layout(broken) as reader:
        said.clear()
        assert read_deltas(ReaderEndpoint(reader), [manifest], wanted, warn=said.append) == {}
        assert "is corrupt or truncated" in str(said[0])


def test_a_rebuild_cut_short_starts_again_from_the_pack_it_kept(releases: dict[str, Path], tmp_path: Path) -> None:
    from updater.oci import Descriptor

    medium = tmp_path / "stick"
    export([releases["1.1.0"]], medium, bases=(str(releases["1.0.0"]),))
    listed = json.loads((medium / "sealift-medium.json").read_text())["bundles"][0]
    delta = Descriptor.from_json(listed["chunks"], where="test")
    pack = next(layer for layer in json.loads((medium / "blobs/sha256" / delta.digest[7:]).read_text())["layers"]
                if layer["mediaType"] == PACK_MEDIA)
    store = BundleStore(tmp_path / "device")
    take(store, releases["1.0.0"], CPU)
    top = Descriptor.from_json(json.loads((releases["1.1.0"] / "index.json").read_text())["manifests"][0], where="test")
    # as a poll leaves it when the updater is killed mid-rebuild: the pack arrived, a partial blob beside it
    incoming = store.root / f".incoming-{top.digest[7:]}"
    (incoming / "blobs/sha256").mkdir(parents=True)
    (incoming / PACKS / "blobs/sha256").mkdir(parents=True)
    shutil.copyfile(medium / "blobs/sha256" / pack["digest"][7:], incoming / PACKS / "blobs/sha256" / pack["digest"][7:])
    (incoming / f"blobs/sha256/.rebuild-{model_digest(releases['1.1.0'])[7:]}").write_bytes(b"half a model")
    (medium / "blobs/sha256" / pack["digest"][7:]).unlink()  # the source no longer has it: it must not be needed
    with open_layout(medium) as reader, store.incoming(top, resumable=True) as assembling:
        assembling.fill(ReaderEndpoint(reader), deltas=[delta], warn=pytest.fail)
        assert assembling.moved.blobs_rebuilt == 1 and assembling.moved.bytes_sent < TAIL  # the index only: no pack again
        model = assembling.layout.path(model_digest(releases["1.1.0"]))
        assert model.read_bytes() == (releases["1.1.0"] / "blobs/sha256" / model.name).read_bytes()
        assert not assembling.layout.has_blob(pack["digest"]) and not (incoming / PACKS / "blobs/sha256" / pack["digest"][7:]).exists()
        finished = assembling.complete()
    assert not (finished / PACKS).exists() and not list((finished / "blobs/sha256").glob(".*"))  # a bundle holds its blobs only


def test_only_a_few_deltas_on_a_kept_base_are_ever_read(releases: dict[str, Path], tmp_path: Path) -> None:
    from updater.deltas import BASE_DIGEST
    from updater.oci import Descriptor

    store = BundleStore(tmp_path / "device")
    kept = take(store, releases["1.0.0"], CPU)
    top = Descriptor.from_json(json.loads((releases["1.1.0"] / "index.json").read_text())["manifests"][0], where="test")

    def listed(base: str, n: int) -> Descriptor:
        return Descriptor(media_type="m", digest=f"sha256:{n:064x}", size=1, annotations={BASE_DIGEST: base} if base else {})

    offered = [listed("", 1), listed("sha256:" + "0" * 64, 2), listed("not-a-digest", 3), listed(kept.name, 4),
               *(listed(f"sha256:{kept.name}", n) for n in range(5, 50))]  # a hostile list: junk, and many on the kept base
    with store.incoming(top) as assembling:
        usable = assembling.usable(offered)
    assert [d.digest for d in usable] == [f"sha256:{n:064x}" for n in range(5, 9)]
