"""The delivery benchmark: bytes moved per hop, delta media, and many devices on one site mirror.

Starts three CNCF distribution registries on loopback (origin, DMZ mirror, OT mirror), builds and
signs release 1 of an app (an image with a base layer and an app layer, a model, a config) and
release 2 (a new app layer and a new model; the rest unchanged), then measures:

- **bytes per hop**: for the first install and for the update, what crosses each hop (``push``
  to the origin, ``mirror sync`` origin to DMZ, DMZ to OT, and the device's download from the OT
  mirror), read from each registry's access log (or from the push's own count), against the floor
  beside it: the sum of the blobs the hop had to move (all of release 1; for the update, only the
  changed blobs). Target: at most 1.05x the floor plus metadata (manifests and signed TUF files).
- **rotation**: a new site overlay (configuration and sealed secrets) for the running release 2
  through the same hops; the floor is the overlay's own blobs: no image layer or model moves.
- **delta medium**: ``export --base`` release 1 against a full export of release 2.
- **retrained model**: release 2.1 is release 2 with the last 5% of its model changed in place,
  pushed with ``--base`` release 2 (a chunk delta), through the same hops, and exported on release
  2; the floor is the bytes that changed. A mirror rebuilds the model from its own release 2,
  which it serves its own sync on its side of the hop (reported apart).
- **one site mirror, many devices**: ``--devices`` devices (threads, each with its own state)
  download a release from the site mirror at once; the origin serves it once (to the mirror's
  sync), whatever the number of devices.

``push to origin`` is the push's own count of blobs and manifests sent; every other hop is what
the sending registry's access log says it served (blobs, manifests and the signed metadata).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundler.build import BuildOptions, build_bundles, select_profiles  # noqa: E402
from bundler.devices import Inventory  # noqa: E402
from bundler.export import export  # noqa: E402
from bundler.overlay import build_overlay  # noqa: E402
from bundler.publish import mirror_sync, push  # noqa: E402
from bundler.spec import load_spec  # noqa: E402
from scripts.oci_image import FileEntry, ImageConfig, Platform, PlatformImage, write_image_layout  # noqa: E402
from tests.builders import signed  # noqa: E402
from tests.fakes import NoEngine  # noqa: E402
from tests.realparts import Registry, start_registry  # noqa: E402
from updater.deltas import listed  # noqa: E402
from updater.identity import DeviceIdentity  # noqa: E402
from updater.install import Installer  # noqa: E402
from updater.poll import RegistryPoller  # noqa: E402
from updater.profiles import builtin_profile_dir, load_profiles  # noqa: E402
from updater.registry import connect  # noqa: E402
from updater.slots import DeviceState, Release  # noqa: E402
from updater.transfer import RegistryEndpoint  # noqa: E402
from updater.trust import TrustedState  # noqa: E402

MIB = 1 << 20
CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]
SPEC = """\
name: fleet-app
version: {version}
profiles: [x86_64-cpu]
images:
  app: {{source: "oci:image-{version}:{version}"}}
models:
  detector: {{path: models/detector-{version}.bin}}
configs:
  settings: {{path: config/settings.yaml}}
app:
  services:
    app:
      image: app
      volumes: ["detector:/models/detector", "settings:/etc/settings.yaml"]
      secrets: [api-token]
secrets:
  api-token: {{environment: FLEET_API_TOKEN}}
"""
SITE = "plant-1"


def make_release(src: Path, version: str, *, base_layer: Path, model_mib: int, app_layer_mib: int) -> Path:
    """Write release ``version``'s inputs (an app layer and a model, unless there already) and build its
    bundle; the base layer is shared by all releases."""
    (src / "config").mkdir(parents=True, exist_ok=True)
    (src / "config/settings.yaml").write_text("threshold: 0.5\n")
    for path, mib in ((src / f"app-{version}.bin", app_layer_mib), (src / f"models/detector-{version}.bin", model_mib)):
        if not path.exists():
            _random_file(path, mib)
    image = PlatformImage(platform=Platform.parse("linux/amd64"),
                          layers=((FileEntry(path="/base/base.bin", source=base_layer),),
                                  (FileEntry(path="/app/app.bin", source=src / f"app-{version}.bin"),)),
                          config=ImageConfig(cmd=("/bin/true",)))
    write_image_layout(src / f"image-{version}", version, [image], epoch=0)
    spec_path = src / f"sealift-{version}.yaml"
    spec_path.write_text(SPEC.format(version=version))
    spec = load_spec(spec_path)
    (built,) = build_bundles(spec, select_profiles(spec, {CPU.name: CPU}, (CPU.name,)), BuildOptions(out=src / "out", epoch=0))
    return built.path


def retrain(src: Path, version: str, *, like: str, tail: float) -> int:
    """Release ``version``'s inputs: ``like``'s app layer, and its model with the last ``tail`` of it changed
    in place (a retrained head); returns the bytes changed."""
    shutil.copyfile(src / f"app-{like}.bin", src / f"app-{version}.bin")
    model = src / f"models/detector-{version}.bin"
    shutil.copyfile(src / f"models/detector-{like}.bin", model)
    size = model.stat().st_size
    changed = int(size * tail)
    with open(model, "r+b") as f:
        f.seek(size - changed)
        f.write(os.urandom(changed))
    return changed


def make_overlay(spec_path: Path, device_state: Path) -> Path:
    """Enroll a device at SITE (its state in ``device_state``) and build SITE's overlay for it."""
    (spec_path.parent / "sites").mkdir(exist_ok=True)
    (spec_path.parent / "sites" / f"{SITE}.yaml").write_text("version: 1.0.0\nenvironment:\n  app: {SITE_ID: plant-1}\n")
    record = DeviceIdentity(device_state).enroll(site=SITE, profile=CPU.name)
    (spec_path.parent / "device.json").write_text(json.dumps(record))
    inventory = spec_path.parent / "devices.yaml"
    Inventory(inventory).add(spec_path.parent / "device.json")
    os.environ["FLEET_API_TOKEN"] = "bench-token-" + os.urandom(8).hex()
    try:
        path, _ = build_overlay(load_spec(spec_path), SITE, inventory=inventory, out=spec_path.parent / "overlays")
    finally:
        del os.environ["FLEET_API_TOKEN"]
    return path


def _top(bundle: Path) -> str:
    digest: str = json.loads((bundle / "index.json").read_text())["manifests"][0]["digest"]
    return digest


def _random_file(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def blob_sizes(bundle: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (bundle / "blobs" / "sha256").iterdir()}


def served(registry: Registry, since: int) -> int:
    """Bytes the registry sent in answers since its ``since``-th request."""
    return sum(r.bytes for r in registry.requests()[since:] if r.method == "GET")


class Device:
    """A device's download side: its own state, trust and store; no engine (only the bytes are measured)."""

    def __init__(self, root: Path, trusted_root: Path, source: str, *, identity: Path | None = None) -> None:
        TrustedState(root).init(trusted_root)
        if identity is not None:  # enrolled at SITE: the overlays are sealed to this key
            shutil.copytree(identity, root / "identity")
        self.installer = Installer(state_dir=root, runtime=NoEngine(), profile=CPU)
        self.poller = RegistryPoller(source, installer=self.installer, profile=CPU, plain_http=True)

    def download(self, state: DeviceState | None = None) -> int:
        """Find what is newer than ``state`` (default: the device's) and download what this device lacks;
        return the bytes of blobs fetched."""
        client = connect(self.poller.source, plain_http=True, what="site registry")
        try:
            found = self.poller.find(client, state)
            assert found is not None, "the mirror offers nothing newer"
            fetched = 0
            for signed_part in (found.overlay, found.app):
                if signed_part is None:
                    continue
                with self.installer.store.incoming(signed_part.top) as incoming:
                    incoming.fill(RegistryEndpoint(client), deltas=listed(client, signed_part.top.digest, warn=print))
                    incoming.metadata = found.metadata
                    incoming.complete()
                fetched += incoming.moved.bytes_sent
            return fetched
        finally:
            client.close()


def hop_round(work: Path, releases: dict[str, Path], trusted_root: Path, identity: Path, retrained: int) -> dict[str, Any]:
    """One pass of release 1, release 2, a new overlay for release 2, then release 3 (release 2's model with
    ``retrained`` bytes changed, 2.1.0, pushed with a chunk delta on release 2) through origin, DMZ, OT and a device."""
    origin, dmz, ot = start_registry(), start_registry(), start_registry()
    try:
        device = Device(work / "device", trusted_root, f"{ot.address}/fleet-app", identity=identity)
        figures: dict[str, Any] = {}
        previous: dict[str, int] = {}
        # the rotation's device runs release 2 with an older overlay: the poll finds the new one alone
        running = DeviceState(current=Release(name="fleet-app", version="2.0.0", profile=CPU.name, slot="a",
                                               digest=_top(releases["2"]), overlay="0.1.0", overlay_digest="sha256:" + "0" * 64))
        for label, bundle, state in (("first install", releases["1"], None), ("update", releases["2"], None),
                                     ("rotation", releases["overlay"], running), ("retrained model", releases["2.1"], None)):
            sizes = blob_sizes(bundle)
            changed = sum(size for name, size in sizes.items() if name not in previous)
            base = None
            if label == "retrained model":  # a chunk delta on release 2: the model's changed bytes, not its size
                base = str(releases["2"])
                changed += retrained - max(size for name, size in sizes.items() if name not in previous)
            pushed = push(bundle, f"{origin.address}/fleet-app", plain_http=True, base=base)
            hop_bytes = {"push to origin": pushed.moved.bytes_sent}
            read_back = {}  # what a mirror served its own sync: the base of each blob it rebuilt (on its side of the hop)
            for source, mirror, hop in ((origin, dmz, "origin to DMZ"), (dmz, ot, "DMZ to OT")):
                marks = (len(source.requests()), len(mirror.requests()))
                mirror_sync(f"{source.address}/fleet-app", f"{mirror.address}", plain_http_from=True, plain_http_to=True)
                hop_bytes[hop] = served(source, marks[0])
                read_back[hop.split()[-1]] = served(mirror, marks[1])
            ot_mark = len(ot.requests())
            device.download(state)
            hop_bytes["OT to device"] = served(ot, ot_mark)
            figures[label] = {"changed_blob_bytes": changed, "hops": hop_bytes, "read_back": read_back}
            previous = {**previous, **sizes}
        return figures
    finally:
        for registry in (origin, dmz, ot):
            registry.stop()
        shutil.rmtree(work / "device", ignore_errors=True)


def many_devices(work: Path, bundle: Path, trusted_root: Path, count: int) -> dict[str, Any]:
    origin, ot = start_registry(), start_registry()
    try:
        push(bundle, f"{origin.address}/fleet-app", plain_http=True)
        mirror_sync(f"{origin.address}/fleet-app", ot.address, plain_http_from=True, plain_http_to=True)
        ot_mark = len(ot.requests())
        devices = [Device(work / f"device-{i}", trusted_root, f"{ot.address}/fleet-app") for i in range(count)]
        errors: list[BaseException] = []

        def run(device: Device) -> None:
            try:
                device.download()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(d,)) for d in devices]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise SystemExit(f"{len(errors)} of {count} devices failed: {errors[0]}")
        bundle_bytes = sum(blob_sizes(bundle).values())
        return {"devices": count, "seconds": elapsed, "bundle_bytes": bundle_bytes,
                "mirror_served": served(ot, ot_mark), "origin_served": served(origin, 0)}
    finally:
        origin.stop()
        ot.stop()
        for path in work.glob("device-*"):
            shutil.rmtree(path, ignore_errors=True)


def measure(repeat: int, *, model_mib: int = 256, base_layer_mib: int = 64, app_layer_mib: int = 16,
            devices: int = 50, device_model_mib: int = 8) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sealift-bench-delivery-"))
    try:
        src = work / "src"
        _random_file(src / "base.bin", base_layer_mib)
        releases = {v: make_release(src, f"{v}.0.0", base_layer=src / "base.bin", model_mib=model_mib, app_layer_mib=app_layer_mib)
                    for v in ("1", "2")}
        retrained = retrain(src, "2.1.0", like="2.0.0", tail=0.05)
        releases["2.1"] = make_release(src, "2.1.0", base_layer=src / "base.bin", model_mib=model_mib, app_layer_mib=app_layer_mib)
        small = make_release(work / "small", "3.0.0", base_layer=src / "base.bin", model_mib=device_model_mib, app_layer_mib=1)
        identity = work / "enrolled"
        releases["overlay"] = make_overlay(src / "sealift-2.0.0.yaml", identity)
        trusted_root = signed([*releases.values(), small], work / "signing")
        rounds = [hop_round(work, releases, trusted_root, identity / "identity", retrained) for _ in range(repeat)]
        hops = {label: {"changed_blob_bytes": rounds[0][label]["changed_blob_bytes"],
                        **{kind: {hop: statistics.median(r[label][kind][hop] for r in rounds) for hop in rounds[0][label][kind]}
                           for kind in ("hops", "read_back")}}
                for label in rounds[0]}
        full = export([releases["2"]], work / "full")
        delta = export([releases["2"]], work / "delta", bases=(str(releases["1"]),))
        export([releases["2.1"]], work / "retrained", bases=(str(releases["2"]),))
        media = {"full_bytes": _tree_bytes(work / "full"), "delta_bytes": _tree_bytes(work / "delta"),
                 "blobs_left_to_base": delta.bundles[0].blobs_from_base, "full_blobs": full.moved.blobs_sent,
                 "retrained_delta_bytes": _tree_bytes(work / "retrained"), "retrained_changed": retrained}
        crowd = many_devices(work, small, trusted_root, devices)
        return {"hops": hops, "media": media, "many_devices": crowd,
                "sizes_mib": {"model": model_mib, "base_layer": base_layer_mib, "app_layer": app_layer_mib,
                              "device_bundle": device_model_mib}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _size(n: float) -> str:
    return f"{n / MIB:.2f} MiB" if n >= MIB else f"{n / 1024:.1f} KiB"


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def print_report(figures: dict[str, Any]) -> None:
    print("| release | hop | bytes moved | changed blobs | moved / changed | overhead (manifests, metadata) |")
    print("|---|---|---|---|---|---|")
    for label, figure in figures["hops"].items():
        floor = figure["changed_blob_bytes"]
        for hop, moved in figure["hops"].items():
            print(f"| {label} | {hop} | {_size(moved)} | {_size(floor)} | {moved / floor:.4f}x | {(moved - floor) / 1024:.1f} KiB |")
    retrained = figures["hops"]["retrained model"]["read_back"]
    print(f"\nretrained model: each mirror served its own sync the base it rebuilt from (on its side of the hop): "
          f"DMZ {_size(retrained['DMZ'])}, OT {_size(retrained['OT'])}")
    rotation, update = (figures["hops"][k]["hops"]["OT to device"] for k in ("rotation", "update"))
    print(f"\na rotation brought the device {rotation / 1024:.1f} KiB, {rotation / update:.6f} of what the update brought")
    m = figures["media"]
    print(f"\ndelta medium {m['delta_bytes'] / MIB:.2f} MiB, full medium {m['full_bytes'] / MIB:.2f} MiB "
          f"({m['delta_bytes'] / m['full_bytes']:.3f} of it; {m['blobs_left_to_base']} blobs left to the base)")
    print(f"retrained model on a delta medium: {m['retrained_delta_bytes'] / MIB:.2f} MiB for {m['retrained_changed'] / MIB:.2f} MiB "
          f"changed ({m['retrained_delta_bytes'] / m['retrained_changed']:.3f}x, with manifests, metadata and the medium's own files)")
    c = figures["many_devices"]
    print(f"{c['devices']} devices pulled a {c['bundle_bytes'] / MIB:.1f} MiB bundle from one site mirror in {c['seconds']:.1f} s: "
          f"the mirror served {c['mirror_served'] / MIB:.1f} MiB ({c['mirror_served'] / c['bundle_bytes']:.2f} bundles), "
          f"the origin {c['origin_served'] / MIB:.1f} MiB in all ({c['origin_served'] / c['bundle_bytes']:.2f} bundles, "
          "to the one mirror sync)")
