"""Chunk deltas on real registries (CNCF distribution) and on a medium: a retrained model goes from
the origin through two mirror hops to devices, and onto a USB stick, as its changed chunks; a
device without the base, one whose delta was damaged at its mirror, and a mirror without the base
take the whole blob instead. The engine is a fake (tests/fakes.py): what is tested here is what
crosses each hop, and installs are tested on the real engine elsewhere."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundler.cli import cli as sealift
from tests.builders import QUICK_SPEC, project, signed
from tests.envelope import sealift_json
from tests.fakes import FakeEngine
from tests.realparts import Registry, RegistryFactory
from updater.deltas import LARGE, referrers_tag
from updater.errors import InputError
from updater.install import Installer
from updater.poll import RegistryPoller
from updater.profiles import builtin_profile_dir, load_profiles
from updater.registry import connect
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]
MODEL = LARGE + (4 << 20)
TAIL = 1 << 20  # 1.1.0 retrains the head: the model's last MiB changes in place
CHUNKS = int(TAIL * 1.15) + (128 << 10)  # what may cross a hop for it: the changed bytes, chunk edges, the index
pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """demo 1.0.0 and 1.1.0 for x86_64-cpu, signed, with a model of LARGE + 4 MiB; "root" for devices."""
    from bundler.build import BuildOptions, build_bundles, select_profiles
    from bundler.spec import load_spec

    root = tmp_path_factory.mktemp("chunked")
    model = bytearray(os.urandom(MODEL))
    spec_path = project(root / "src", spec=QUICK_SPEC, model_bytes=bytes(model))
    built: dict[str, Path] = {}
    for version in ("1.0.0", "1.1.0"):
        if version == "1.1.0":
            model[-TAIL:] = os.urandom(TAIL)
            (root / "src/models/int8.bin").write_bytes(bytes(model))
        spec_path.write_text(QUICK_SPEC.replace("version: 1.2.0", f"version: {version}"))
        spec = load_spec(spec_path)
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    built["root"] = signed([built["1.0.0"], built["1.1.0"]], root / "signing")
    return built



def index_of(bundle: Path) -> str:
    digest: str = json.loads((bundle / "index.json").read_text())["manifests"][0]["digest"]
    return digest


def model_of(bundle: Path) -> Path:
    return max((bundle / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)



def served(registry: Registry, since: int) -> tuple[int, Counter[str]]:
    """Bytes the registry sent since its ``since``-th request, and how often it sent each blob whole."""
    return sum(r.bytes for r in registry.requests()[since:] if r.method == "GET"), registry.blob_reads(since)


class Device:
    def __init__(self, root: Path, trusted_root: Path) -> None:
        TrustedState(root).init(trusted_root)
        self.root = root
        self.lines: list[str] = []
        self.installer = Installer(state_dir=root, runtime=FakeEngine(), profile=CPU)

    def update(self, mirror: Registry, version: str) -> None:
        outcome = RegistryPoller(f"{mirror.address}/demo", installer=self.installer, profile=CPU, plain_http=True,
                                 log=self.lines.append).poll()
        assert outcome is not None and outcome.committed and outcome.release.version == version, self.lines

    def holds(self, blob: Path) -> bool:
        return any(p.read_bytes() == blob.read_bytes() for p in (self.root / "bundles").glob(f"*/blobs/sha256/{blob.name}"))


def test_a_retrained_model_crosses_two_mirror_hops_and_reaches_devices_as_its_changed_chunks(
        chunked: dict[str, Path], registry_factory: RegistryFactory, tmp_path: Path) -> None:
    origin, dmz, ot = registry_factory(), registry_factory(), registry_factory()
    old, new = chunked["1.0.0"], chunked["1.1.0"]
    model = model_of(new)

    def sync() -> list[tuple[dict[str, Any], int, Counter[str]]]:
        """Both hops; for each, what it did and what its source served (bytes, and blobs sent whole)."""
        hops = []
        for source, mirror in ((origin, dmz), (dmz, ot)):
            mark = len(source.requests())
            hop = sealift_json("mirror", "sync", "--from", f"{source.address}/demo", "--to", mirror.address, "--plain-http")
            hops.append((hop, *served(source, mark)))
        return hops

    refused = CliRunner().invoke(sealift, ["push", str(new), f"{origin.address}/demo", "--plain-http", "--base", str(tmp_path / "gone")])
    assert refused.exit_code == InputError.exit_code and "gone: no such bundle" in refused.stderr
    assert not [r for r in origin.requests() if r.method in ("PUT", "POST", "PATCH")]  # refused before anything was sent
    sealift_json("push", str(old), f"{origin.address}/demo", "--plain-http")
    sync()
    devices = [Device(tmp_path / name, chunked["root"]) for name in ("a", "b", "d", "e")]
    for device in devices:
        device.update(ot, "1.0.0")

    pushed = sealift_json("push", str(new), f"{origin.address}/demo", "--plain-http", "--base", str(old))
    (delta,) = pushed["deltas"]
    assert delta["base"] == "1.0.0" and delta["blobs_rebuilt"] == 1 and TAIL <= delta["bytes"] <= CHUNKS
    for hop, sent, blobs in sync():
        assert hop["blobs_rebuilt"] == 1 and hop["bytes_rebuilt"] == MODEL  # the mirror rebuilt it from its own 1.0.0
        assert f"sha256:{model.name}" not in blobs and sent <= CHUNKS + (64 << 10)  # the chunks crossed, never the model
    assert sealift_json("mirror", "sync", "--from", f"{origin.address}/demo", "--to", dmz.address, "--plain-http")[
        "blobs_sent"] == 0  # a second sync has nothing to send
    # within one registry the blobs are linked, the delta with them: nothing is sent or rebuilt
    copied = sealift_json("mirror", "sync", "--from", f"{dmz.address}/demo", "--to", f"{dmz.address}/demo-copy", "--plain-http")
    assert copied["blobs_sent"] == copied["blobs_rebuilt"] == 0 and copied["blobs_mounted"] > 0
    client = connect(f"{dmz.address}/demo-copy", plain_http=True, what="copy")
    try:
        assert client.get_manifest(referrers_tag(index_of(new))) is not None  # its delta list came along
    finally:
        client.close()

    # a device holding 1.0.0 fetches the chunks from its site's mirror and rebuilds the model
    mark = len(ot.requests())
    devices[0].update(ot, "1.1.0")
    sent, blobs = served(ot, mark)
    assert f"sha256:{model.name}" not in blobs and sent <= CHUNKS + (64 << 10) and devices[0].holds(model)
    assert any("1 rebuilt from chunk deltas" in line for line in devices[0].lines)

    # a pack damaged at the mirror: refused, said, and the whole model fetched instead
    pack = next(ot.blob_path(d) for d in blobs if d and ot.blob_path(d).stat().st_size > TAIL // 2)  # what the first device read
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    mark = len(ot.requests())
    devices[1].update(ot, "1.1.0")
    assert served(ot, mark)[1][f"sha256:{model.name}"] == 1 and devices[1].holds(model)
    assert any("does not match its digest" in line and "fetching the whole blob instead" in line for line in devices[1].lines)
    assert not list((tmp_path / "b" / "bundles").glob(".incoming-*"))

    # a device without the base takes the whole model at once
    fresh = Device(tmp_path / "c", chunked["root"])
    mark = len(ot.requests())
    fresh.update(ot, "1.1.0")
    assert served(ot, mark)[1][f"sha256:{model.name}"] == 1 and fresh.holds(model)

    # a new mirror that never held 1.0.0 (synced 1.1.0 alone) gets the model whole, and the delta for devices that hold the base
    newcomer = registry_factory()
    hop = sealift_json("mirror", "sync", "--from", f"{dmz.address}/demo:x86_64-cpu-1.1.0", "--to", newcomer.address, "--plain-http")
    assert hop["blobs_rebuilt"] == 0 and newcomer.blob_uploads()[f"sha256:{model.name}"] == 1
    mark = len(newcomer.requests())
    devices[2].update(newcomer, "1.1.0")
    sent, blobs = served(newcomer, mark)
    assert f"sha256:{model.name}" not in blobs and sent <= CHUNKS + (64 << 10) and devices[2].holds(model)

    # a delta whose pack the mirror lost: passed over, and the whole model fetched (never a poll that fails for ever)
    lost = next(newcomer.blob_path(d) for d in blobs if d and newcomer.blob_path(d).stat().st_size > TAIL // 2)
    lost.unlink()
    mark = len(newcomer.requests())
    devices[3].update(newcomer, "1.1.0")
    assert served(newcomer, mark)[1][f"sha256:{model.name}"] == 1 and devices[3].holds(model)
    assert any("fetching the whole blob instead" in line for line in devices[3].lines)


def test_a_device_updates_from_a_delta_medium_carrying_the_changed_chunks(chunked: dict[str, Path], tmp_path: Path) -> None:
    old, new = chunked["1.0.0"], chunked["1.1.0"]
    medium = tmp_path / "stick.tar"
    exported = sealift_json("export", str(new), "--to", str(medium), "--base", str(old))
    (entry,) = exported["bundles"]
    assert entry["chunks"]["artifactType"] == "application/vnd.sealift.delta.v1+json"
    assert medium.stat().st_size < CHUNKS + (256 << 10)  # the chunks, manifests, metadata: not the model
    device = Device(tmp_path / "device", chunked["root"])
    assert device.installer.install(old).committed
    outcome = device.installer.install(medium)
    assert outcome.committed and outcome.release.version == "1.1.0" and device.holds(model_of(new))
