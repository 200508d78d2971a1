"""Delivery with real registries (CNCF distribution) and the real engine: a bundle goes through
`push`, two `mirror sync` hops and a device's poll to a running release, each blob crossing each
hop once; an exported delta installs on a device that has its base; interrupted syncs and pulls
resume; and bad registries, credentials, blobs and media fail clearly with nothing kept."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from click.testing import CliRunner

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.cli import cli as sealift
from bundler.publish import mirror_sync, pull, push
from bundler.spec import load_spec
from tests.builders import healthz, image_layout, manifest_digests, only_app, project
from tests.envelope import result_of, sealift_json
from tests.fakes import NoEngine
from tests.realparts import CuttingProxy, DockerEngine, Registry, RegistryFactory, push_to_registry, sha256_digest
from updater.apps import Apps
from updater.cli import cli as updater_cli
from updater.daemon import Daemon
from updater.docker_runtime import DockerRuntime
from updater.errors import DeliveryError, InputError, Refused
from updater.install import Installer
from updater.poll import RegistryPoller
from updater.profiles import builtin_profile_dir, load_profiles
from updater.registry import Retry, connect
from updater.slots import DeviceState
from updater.transfer import EMPTY_CONFIG
from updater.trust import TrustedState

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]
pytestmark = pytest.mark.registry


def blobs_of(bundle: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (bundle / "blobs" / "sha256").iterdir()}


def metadata_blobs(bundle: Path) -> set[str]:
    """The blobs that carry the bundle's signed metadata in a registry (read again by every poll: they may change)."""
    return {sha256_digest(p.read_bytes()) for p in (bundle / "tuf").iterdir()} | {EMPTY_CONFIG.digest}





def remove_app(engine: DockerEngine) -> None:
    for container in engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
        container.remove(force=True)


@pytest.mark.docker
def test_push_two_mirror_hops_and_a_poll_bring_a_release_each_blob_crossing_each_hop_once(
        releases: dict[str, Path], docker_engine: DockerEngine, registry_factory: RegistryFactory, tmp_path: Path) -> None:
    origin, dmz, ot = registry_factory(), registry_factory(), registry_factory()
    old, new = releases["1.0.0"], releases["1.1.0"]
    state_dir = tmp_path / "device"
    TrustedState(state_dir).init(releases["root"])
    installer = Installer(state_dir=state_dir, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    link = CuttingProxy(ot.address)  # the device's link to its site's mirror, which will drop once
    poller = RegistryPoller(f"{link.address}/vision-app", installer=installer, profile=CPU, plain_http=True)
    try:
        for bundle in (old, new):
            wanted = blobs_of(bundle) - manifest_digests(bundle) - (blobs_of(old) if bundle == new else set())
            pushed = sealift_json("push", str(bundle), f"{origin.address}/vision-app", "--plain-http")
            hop1 = sealift_json("mirror", "sync", "--from", f"{origin.address}/vision-app", "--to", dmz.address,
                                "--profile", "x86_64-cpu", "--plain-http")
            hop2 = sealift_json("mirror", "sync", "--from", f"{dmz.address}/vision-app", "--to", ot.address,
                                "--profile", "x86_64-cpu", "--plain-http")
            assert pushed["blobs_sent"] == hop1["blobs_sent"] == hop2["blobs_sent"] == len(wanted)
            before = (len(origin.requests()), len(dmz.requests()))
            if bundle == old:  # the link drops in the middle of the first download: the poll fails, nothing changes
                link.cut_after(600_000)  # inside the 1 MB busybox layer
                lines: list[str] = []
                assert isinstance(Daemon(installer, None, pollers=[poller], interval=10, log=lines.append).run(once=True), DeliveryError)
                assert link.cuts == 1 and any('event="poll-failed"' in line and "run again to resume" in line for line in lines)
                assert only_app(state_dir).load().current is None
            outcome = poller.poll()  # resumes the download where it stopped
            assert outcome is not None and outcome.committed and outcome.release.version == bundle.name.split("-")[2]
            assert (len(origin.requests()), len(dmz.requests())) == before  # the device reached only its site's mirror
            assert healthz() == 200
            downloaded = Counter(r.blob for r in ot.requests() if r.method == "GET" and r.status == 200 and r.blob
                                 and r.blob not in manifest_digests(bundle))
            assert set(downloaded) >= wanted
        assert poller.poll() is None  # up to date: nothing more to do
        assert [r for r in ot.requests() if r.status == 206]  # the cut blob was resumed, not fetched again
        # each blob crossed each hop once: read once from the origin and the DMZ mirror, uploaded once to each
        # mirror, downloaded once by the device (which took what 1.1.0 shares with 1.0.0 from its own store)
        bundle_blobs = blobs_of(old) | blobs_of(new)
        for counted in (origin.blob_reads(), dmz.blob_reads(), dmz.blob_uploads(), ot.blob_uploads(), ot.blob_reads()):
            crossings = {d: n for d, n in counted.items() if d not in metadata_blobs(new)}
            assert set(crossings) <= bundle_blobs and set(crossings.values()) == {1}
        # a registry that cannot be reached: the poll fails, the wait grows, the release keeps serving
        offline = RegistryPoller("127.0.0.1:9/vision-app", installer=installer, profile=CPU, plain_http=True,
                                 retry=Retry(delays=(0.05,)))
        lines: list[str] = []
        daemon = Daemon(installer, None, pollers=[offline], interval=10, log=lines.append)
        assert isinstance(daemon.run(once=True), DeliveryError)  # an outage, not a refusal
        assert any('event="poll-failed"' in line and "cannot reach 127.0.0.1:9" in line for line in lines)
        assert daemon.next_wait() >= 10 * 2 * 0.8
        assert healthz() == 200 and only_app(state_dir).load().current.version == "1.1.0"  # type: ignore[union-attr]
    finally:
        link.close()
        remove_app(docker_engine)


@pytest.mark.docker
def test_an_exported_delta_installs_where_the_base_is_and_is_refused_where_it_is_not(
        releases: dict[str, Path], docker_engine: DockerEngine, registry: Registry, tmp_path: Path) -> None:
    old, new = releases["1.0.0"], releases["1.1.0"]
    push(old, f"{registry.address}/delta-base", plain_http=True)
    medium = tmp_path / "stick"
    exported = sealift_json("export", str(new), "--to", str(medium), "--base", f"{registry.address}/delta-base:x86_64-cpu-1.0.0",
                            "--plain-http")
    (entry,) = exported["bundles"]
    assert entry["base"]["version"] == "1.0.0" and entry["blobs_from_base"] == len(blobs_of(old) & blobs_of(new) - manifest_digests(new))
    held = blobs_of(medium)
    assert not held & (blobs_of(old) - manifest_digests(new))  # nothing the base has, but the manifests
    full = tmp_path / "full.tar"
    sealift_json("export", str(new), "--to", str(full))
    assert medium.stat().st_size < full.stat().st_size
    checked = CliRunner().invoke(sealift, ["verify", str(medium), "--trusted-root", str(releases["root"])])
    assert checked.exit_code == 0 and "delta on 1.0.0" in checked.stdout

    # a device without the base refuses the delta before changing anything
    bare = tmp_path / "bare"
    TrustedState(bare).init(releases["root"])
    refusing = Installer(state_dir=bare, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    with pytest.raises(Refused, match=r"is a delta on vision-app 1\.0\.0 .* which this device does not have"):
        refusing.install(medium)
    # an application it never held gets no state from an artifact refused before it was verified as that application's
    assert Apps(bare).names() == [] and not (bare / "apps" / "vision-app" / "state.json").exists()
    assert not (bare / "bundles").exists() and not (bare / "apps" / "vision-app" / "slots").exists()

    state_dir = tmp_path / "device"
    TrustedState(state_dir).init(releases["root"])
    installer = Installer(state_dir=state_dir, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    try:
        assert installer.install(old).committed
        checked = CliRunner().invoke(updater_cli, ["--state-dir", str(state_dir), "verify", str(medium), "--profile", "x86_64-cpu"])
        assert checked.exit_code == 0 and checked.stdout.startswith("ok vision-app 1.1.0 for x86_64-cpu"), checked.output
        assert "signed metadata: snapshot expires first, at " in checked.stdout
        outcome = installer.install(medium)
        assert outcome.committed and outcome.release.version == "1.1.0"
        assert healthz() == 200
        state = only_app(state_dir).load()
        assert state.current is not None and state.previous is not None
        # the device keeps the bundles of the releases it can run: the next delta finds its base there
        kept = {p.name for p in (state_dir / "bundles").iterdir() if not p.name.startswith(".")}
        assert kept == {state.current.digest[7:], state.previous.digest[7:]}
    finally:
        remove_app(docker_engine)


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unsigned bundle with an 8 MiB model that does not compress (several read chunks)."""
    root = tmp_path_factory.mktemp("big")
    spec = load_spec(project(root, model_bytes=os.urandom(8 << 20)))
    (built,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
    return built.path


@pytest.fixture
def cutting(registry: Registry) -> Iterator[CuttingProxy]:
    """The session registry behind a link that can be made to drop."""
    proxy = CuttingProxy(registry.address)
    yield proxy
    proxy.close()


def test_a_sync_cut_off_resumes_without_resending_finished_blobs(big_bundle: Path, registry: Registry, cutting: CuttingProxy,
                                                                  registry_factory: RegistryFactory) -> None:
    mirror = registry_factory()
    push(big_bundle, f"{registry.address}/cut-sync", plain_http=True)
    cutting.cut_after(3 << 20)  # inside the 8 MiB model
    result = CliRunner().invoke(sealift, ["mirror", "sync", "--from", f"{cutting.address}/cut-sync", "--to", mirror.address,
                                          "--plain-http"])
    assert result.exit_code == DeliveryError.exit_code and cutting.cuts == 1
    assert "the connection was lost while reading blob" in result.stderr and "Traceback" not in result.output
    finished = set(mirror.blob_uploads())
    assert finished and finished != blobs_of(big_bundle) - manifest_digests(big_bundle)
    second = mirror_sync(f"{cutting.address}/cut-sync", mirror.address, plain_http_from=True, plain_http_to=True)
    assert second.moved.blobs_present == len(finished)
    assert set(mirror.blob_uploads()) == blobs_of(big_bundle) - manifest_digests(big_bundle)
    assert max(mirror.blob_uploads().values()) == 1  # no finished blob was sent again


def test_a_pull_cut_off_resumes_with_a_ranged_request(big_bundle: Path, registry: Registry, cutting: CuttingProxy,
                                                      tmp_path: Path) -> None:
    push(big_bundle, f"{registry.address}/cut-pull", plain_http=True)
    out = tmp_path / "pulled"
    cutting.cut_after(4 << 20)
    args = ["pull", f"{cutting.address}/cut-pull:x86_64-cpu-1.2.0", "--out", str(out), "--plain-http"]
    first = CliRunner().invoke(sealift, args)
    assert first.exit_code == DeliveryError.exit_code and "run again to resume" in first.stderr and "Traceback" not in first.output
    partial = [p for p in (out / "blobs" / "sha256").iterdir() if p.name.startswith(".partial-")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0 and not (out / "index.json").exists()
    model = "sha256:" + partial[0].name.removeprefix(".partial-")
    arrived = partial[0].stat().st_size
    second = CliRunner().invoke(sealift, args)
    assert second.exit_code == 0, second.output
    size = (big_bundle / "blobs/sha256" / model[7:]).stat().st_size
    ranged = [r for r in registry.requests() if r.blob == model and r.method == "GET" and r.status == 206]
    assert [r.bytes for r in ranged] == [size - arrived]  # what arrived before was not fetched again
    assert not [p for p in (out / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    assert (out / "index.json").exists()


def test_a_blob_that_does_not_match_its_digest_is_refused_and_never_kept(big_bundle: Path, registry: Registry, tmp_path: Path) -> None:
    push(big_bundle, f"{registry.address}/tampered", plain_http=True)
    model = max(blobs_of(big_bundle), key=lambda d: (big_bundle / "blobs/sha256" / d[7:]).stat().st_size)
    stored = registry.blob_path(model)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    out = tmp_path / "pulled"
    result = CliRunner().invoke(sealift, ["pull", f"{registry.address}/tampered:x86_64-cpu-1.2.0", "--out", str(out), "--plain-http"])
    assert result.exit_code == Refused.exit_code and f"blob {model} does not match its digest" in result.stderr
    assert not (out / "blobs" / "sha256" / model[7:]).exists() and not (out / "index.json").exists()
    assert not [p for p in (out / "blobs" / "sha256").iterdir() if p.name.startswith(".partial")]


def test_a_tampered_bundle_is_not_pushed(big_bundle: Path, registry: Registry, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(big_bundle, copy)
    victim = max((copy / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size - 1)
    with pytest.raises(Refused, match=r"truncated|size"):
        push(copy, f"{registry.address}/never", plain_http=True)
    assert not [r for r in registry.requests() if "/never/" in r.path]


def test_credentials_come_from_the_docker_config_and_wrong_ones_fail_clearly(
        big_bundle: Path, registry_factory: RegistryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"edge:" + bcrypt.hashpw(b"right horse", bcrypt.gensalt(rounds=4)) + b"\n")
    secured = registry_factory(config={"auth": {"htpasswd": {"realm": "sealift-test", "path": str(htpasswd)}}})
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))

    def login(password: str) -> None:
        token = base64.b64encode(f"edge:{password}".encode()).decode()
        (config_dir / "config.json").write_text(json.dumps({"auths": {secured.address: {"auth": token}}}))

    login("wrong horse")
    result = CliRunner().invoke(sealift, ["push", str(big_bundle), f"{secured.address}/demo", "--plain-http"])
    assert result.exit_code == InputError.exit_code and "not authorised" in result.stderr
    assert "horse" not in result.output and base64.b64encode(b"edge:wrong horse").decode() not in result.output
    login("right horse")
    pushed = push(big_bundle, f"{secured.address}/demo", plain_http=True)
    assert pushed.moved.blobs_sent == len(blobs_of(big_bundle) - manifest_digests(big_bundle))


def test_an_unreachable_registry_is_retried_then_named() -> None:
    with pytest.raises(DeliveryError, match=r"cannot reach 127\.0\.0\.1:9 \(connection refused or host unreachable\); gave up after 2"):
        from updater.registry import connect

        connect("127.0.0.1:9/demo", plain_http=True, what="registry", retry=Retry(delays=(0.05,))).tags()


def test_a_whole_registry_syncs_repository_by_repository_leaving_other_artifacts_alone(
        big_bundle: Path, registry_factory: RegistryFactory, tmp_path: Path) -> None:
    origin, mirror = registry_factory(), registry_factory()
    push(big_bundle, f"{origin.address}/team-a/demo", plain_http=True)
    push(big_bundle, f"{origin.address}/team-b/demo", plain_http=True)
    push_to_registry(f"oci:{image_layout(tmp_path / 'image')}:1.0.0", f"{origin.address}/team-a/demo:an-image")
    synced = sealift_json("mirror", "sync", "--from", origin.address, "--to", mirror.address, "--plain-http")
    assert sorted(b["tag"] for b in synced["bundles"]) == ["x86_64-cpu-1.2.0"] * 2
    assert synced["skipped_tags"] == ["team-a/demo:an-image"]
    for repository in ("team-a/demo", "team-b/demo"):
        pulled = pull(f"{mirror.address}/{repository}:x86_64-cpu-1.2.0", tmp_path / repository, plain_http=True)
        assert pulled.bundles[0]["name"] == "demo"


def test_overlays_travel_like_bundles_and_a_mirror_takes_only_its_sites(registry_factory: RegistryFactory, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bundler.devices import Inventory
    from bundler.overlay import build_overlay
    from updater.identity import DeviceIdentity

    spec_path = project(tmp_path / "src")
    inventory = tmp_path / "devices.yaml"
    monkeypatch.setenv("DEMO_API_TOKEN", "tok-delivered-sealed")
    origin, site_mirror = registry_factory(), registry_factory()
    for site in ("plant-7", "plant-9"):
        (tmp_path / "src/sites").mkdir(exist_ok=True)
        (tmp_path / f"src/sites/{site}.yaml").write_text("version: 1.0.0\n")
        record = DeviceIdentity(tmp_path / site).enroll(site=site, profile="x86_64-cpu")
        (tmp_path / f"{site}.json").write_text(json.dumps(record))
        Inventory(inventory).add(tmp_path / f"{site}.json")
        path, _ = build_overlay(load_spec(spec_path), site, inventory=inventory, out=tmp_path / "out")
        pushed = sealift_json("push", str(path), f"{origin.address}/demo", "--plain-http")
        assert pushed["bundles"][0]["tag"] == f"site-{site}-1.0.0"
    synced = sealift_json("mirror", "sync", "--from", f"{origin.address}/demo", "--to", site_mirror.address, "--site", "plant-7",
                          "--plain-http")
    assert [(b["tag"], b["site"]) for b in synced["bundles"]] == [("site-plant-7-1.0.0", "plant-7")]
    for reg in (origin, site_mirror):  # registries only ever hold ciphertext
        assert all(b"tok-delivered-sealed" not in p.read_bytes() for p in reg.workdir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def overlaid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """demo 1.2.0 and 1.3.0 for x86_64-cpu and overlays of plant-7 (1.0.0 fits <1.3.0, 1.1.0 fits >=1.3.0) and
    plant-9, signed by one repository; "device" is a device enrolled at plant-7 and provisioned with its root."""
    from bundler.devices import Inventory
    from bundler.overlay import build_overlay
    from tests.builders import signed
    from updater.identity import DeviceIdentity

    root = tmp_path_factory.mktemp("overlaid")
    spec_path = project(root / "src")
    built: dict[str, Path] = {}
    for version in ("1.2.0", "1.3.0"):
        spec_path.write_text(spec_path.read_text().replace("version: 1.2.0", f"version: {version}"))
        spec = load_spec(spec_path)
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=root / "out", epoch=0))
        built[version] = b.path
    (root / "src/sites").mkdir()
    for site in ("plant-7", "plant-9"):
        record = DeviceIdentity(root / f"device-{site}").enroll(site=site, profile="x86_64-cpu")
        (root / f"{site}.json").write_text(json.dumps(record))
        Inventory(root / "devices.yaml").add(root / f"{site}.json")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEMO_API_TOKEN", "tok-polled-4b1e")
        for site, version, fits in (("plant-7", "1.0.0", "<1.3.0"), ("plant-7", "1.1.0", ">=1.3.0"), ("plant-9", "2.0.0", ">=1.0.0")):
            (root / f"src/sites/{site}.yaml").write_text(f"version: {version}\nfits: '{fits}'\n")
            built[f"{site}-{version}"], _ = build_overlay(load_spec(spec_path), site, inventory=root / "devices.yaml",
                                                          out=root / f"o-{version}")
    TrustedState(root / "device-plant-7").init(signed(list(built.values()), root / "signing"))
    built["device"] = root / "device-plant-7"
    return built


def test_a_poll_takes_the_newest_release_with_the_newest_overlay_of_its_site_that_fits_it(
        overlaid: dict[str, Path], registry: Registry) -> None:
    from updater.slots import DeviceState, Release
    from updater.stage import stage_overlay

    for path in overlaid.values():
        if path.name != overlaid["device"].name:
            push(path, f"{registry.address}/polled", plain_http=True)
    installer = Installer(state_dir=overlaid["device"], runtime=NoEngine(), profile=CPU)
    poller = RegistryPoller(f"{registry.address}/polled", installer=installer, profile=CPU, plain_http=True)
    digest = {name: json.loads((path / "index.json").read_text())["manifests"][0]["digest"]
              for name, path in overlaid.items() if name != "device"}

    def running(version: str, overlay: str | None) -> DeviceState:
        """The device's state with ``version`` running in slot a, with the plant-7 ``overlay`` staged beside it."""
        slot = installer.apps.slots("demo").slot_dir("a")
        shutil.rmtree(slot, ignore_errors=True)
        slot.mkdir(parents=True)
        if overlay is not None:
            from updater.overlay import check_overlay

            stage_overlay(check_overlay(overlaid[f"plant-7-{overlay}"]), slot)
        return DeviceState(current=Release(name="demo", version=version, profile="x86_64-cpu", digest=digest[version], slot="a",
                                           overlay=overlay or "", overlay_digest=digest[f"plant-7-{overlay}"] if overlay else ""))

    def found(state: DeviceState) -> tuple[str | None, str | None]:
        client = connect(f"{registry.address}/polled", plain_http=True, what="registry")
        try:
            result = poller.find(client, state)
        finally:
            client.close()
        if result is None:
            return None, None
        return (result.app.version if result.app else None), (result.overlay.version if result.overlay else None)

    assert found(DeviceState()) == ("1.3.0", "1.1.0")  # a first install: the overlay that fits 1.3.0, never plant-9's
    assert found(running("1.2.0", "1.0.0")) == ("1.3.0", "1.1.0")  # 1.0.0 does not fit 1.3.0; 1.1.0 does
    assert found(running("1.3.0", "1.1.0")) == (None, None)  # up to date
    assert found(running("1.3.0", None)) == (None, "1.1.0")  # no newer release: the overlay alone, a rotation
    failed = running("1.2.0", "1.0.0")
    failed = DeviceState(current=failed.current, failed=(f"{digest['1.3.0']}+{digest['plant-7-1.1.0']}",))
    assert found(failed) == (None, None)  # that pair failed, and the running overlay does not fit 1.3.0: nothing to try


def test_nothing_found_is_said_never_a_silent_success(overlaid: dict[str, Path], registry: Registry, tmp_path: Path) -> None:
    from updater.journal import Journal
    from updater.lastseen import last_polls

    runner = CliRunner()
    source = f"{registry.address}/quiet"
    push(overlaid["1.2.0"], source, plain_http=True)
    # a mirror sync whose filters match nothing fails, naming what the source holds
    typo = runner.invoke(sealift, ["mirror", "sync", "--from", source, "--to", f"{registry.address}/mirror-x", "--profile",
                                   "x86_64-cpuu", "--plain-http"])
    assert typo.exit_code == 2 and "nothing to sync for profile x86_64-cpuu; it holds profile x86_64-cpu" in typo.stderr
    assert connect(f"{registry.address}/mirror-x", plain_http=True, what="mirror").tags() == []  # not even its metadata
    empty = runner.invoke(sealift, ["mirror", "sync", "--from", f"{registry.address}/never-pushed", "--to", registry.address,
                                    "--plain-http"])
    assert empty.exit_code == 2 and "nothing to sync; it holds no Sealift bundle or overlay" in empty.stderr
    path = runner.invoke(sealift, ["mirror", "sync", "--from", "./out/vision-app-1.0.0", "--to", registry.address])
    assert path.exit_code == 2 and "a path, not a registry reference" in path.stderr
    # an unsigned bundle: pushed with a warning, or refused with --require-signed; exported likewise
    spec = load_spec(project(tmp_path / "src"))
    (unsigned,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-cpu",)), BuildOptions(out=tmp_path / "out", epoch=0))
    warned = runner.invoke(sealift, ["push", str(unsigned.path), f"{registry.address}/unsigned", "--plain-http"])
    assert warned.exit_code == 0 and "warning: " in warned.stderr and "carries no signed metadata (tuf/)" in warned.stderr
    refused = runner.invoke(sealift, ["push", str(unsigned.path), f"{registry.address}/unsigned-2", "--plain-http", "--require-signed"])
    assert refused.exit_code == 3 and "(--require-signed)" in refused.stderr
    assert connect(f"{registry.address}/unsigned-2", plain_http=True, what="registry").tags() == []  # nothing was sent
    exported = runner.invoke(sealift, ["export", str(unsigned.path), "--to", str(tmp_path / "usb"), "--require-signed"])
    assert exported.exit_code == 3 and not (tmp_path / "usb").exists()
    # a device polling a repository that is not there, or holds nothing for it: a failed poll with its reason, never up to date
    push(unsigned.path, f"{registry.address}/elsewhere:jetson-orin-1.2.0", plain_http=True)  # another profile's tag only
    installer = Installer(state_dir=overlaid["device"], runtime=NoEngine(), profile=CPU)
    for repository, reason in (("not-there", "repository not-there does not exist at"),
                               ("elsewhere", "holds nothing signed for this device (profile x86_64-cpu, site plant-7); "
                                             "it holds jetson-orin"),
                               ("unsigned", "signed metadata is missing")):
        poller = RegistryPoller(f"{registry.address}/{repository}", installer=installer, profile=CPU, plain_http=True,
                                retry=Retry(delays=()))
        lines: list[str] = []
        failed = Daemon(installer, None, pollers=[poller], interval=10, log=lines.append).run(once=True)
        assert isinstance(failed, DeliveryError) and reason in failed.diagnostics()
        assert not any('event="up-to-date"' in line for line in lines) and any('event="poll-failed"' in line for line in lines)
        assert last_polls(installer.state_dir)[poller.source]["fault"] == "delivery"
    assert Journal(installer.state_dir).since(0)[-1]["kind"] == "poll-failed"
    elsewhere = Installer(state_dir=overlaid["device"], runtime=NoEngine(), profile=CPU, declared=["camera-gw"])
    with pytest.raises(InputError, match="holds demo, which this device does not run"):
        RegistryPoller(source, installer=elsewhere, profile=CPU, plain_http=True).poll()


def test_releases_are_found_by_their_signed_targets_whatever_the_tags_say(overlaid: dict[str, Path], registry: Registry) -> None:
    # pushed under tags that name no profile or version, and 1.3.0's own tag moved onto 1.2.0: the signed targets decide
    source = f"{registry.address}/odd-tags"
    for tag, name in (("candidate", "1.2.0"), ("nightly", "1.3.0"), ("ops", "plant-7-1.1.0"), ("x86_64-cpu-9.9.9", "1.2.0")):
        push(overlaid[name], f"{source}:{tag}", plain_http=True)
    installer = Installer(state_dir=overlaid["device"], runtime=NoEngine(), profile=CPU)
    lines: list[str] = []
    poller = RegistryPoller(source, installer=installer, profile=CPU, plain_http=True, log=lines.append)
    client = connect(source, plain_http=True, what="registry")
    try:
        found = poller.find(client, DeviceState())
        assert found is not None and found.app is not None and found.overlay is not None
        assert (found.app.version, found.app.target, found.overlay.version) == ("1.3.0", "demo/x86_64-cpu/1.3.0", "1.1.0")
        assert found.app.top.digest == json.loads((overlaid["1.3.0"] / "index.json").read_text())["manifests"][0]["digest"]
        # a signed release the repository does not hold is skipped, said in the log; the next one down is taken
        partial = f"{registry.address}/partial"
        push(overlaid["1.2.0"], f"{partial}:whatever", plain_http=True)
        partial_client = connect(partial, plain_http=True, what="registry")
        try:
            older = poller.find(partial_client, DeviceState())
        finally:
            partial_client.close()
        assert older is not None and older.app is not None and older.app.version == "1.2.0"
        assert any("skipped demo/x86_64-cpu/1.3.0: signed, but" in line and "does not hold it" in line for line in lines)
    finally:
        client.close()


def test_a_second_repository_of_a_registry_links_the_blobs_it_holds_elsewhere(
        big_bundle: Path, registry_factory: RegistryFactory) -> None:
    registry = registry_factory()
    push(big_bundle, f"{registry.address}/us/demo", plain_http=True)
    uploads = registry.blob_uploads()
    again = CliRunner().invoke(sealift, ["push", str(big_bundle), f"{registry.address}/eu/demo", "--plain-http",
                                         "--mount-from", "us/demo", "--json"])
    moved = result_of(again.stdout)
    blobs = len(blobs_of(big_bundle) - manifest_digests(big_bundle))
    assert again.exit_code == 0 and moved["blobs_mounted"] == blobs and moved["blobs_sent"] == 0
    synced = mirror_sync(f"{registry.address}/us/demo", f"{registry.address}/asia/demo", plain_http_from=True,
                         plain_http_to=True)  # one registry: linked
    assert synced.moved.blobs_mounted == blobs and synced.moved.blobs_sent == 0
    assert registry.blob_uploads() == uploads  # not one blob sent twice to the registry
    pulled = registry.workdir / "pulled"
    pull(f"{registry.address}/asia/demo:x86_64-cpu-1.2.0", pulled, plain_http=True)  # the linked blobs are there, whole
    assert blobs_of(pulled) == blobs_of(big_bundle)
    # a repository that does not hold them: sent as usual, and no upload session left open
    fresh = push(big_bundle, f"{registry.address}/other", plain_http=True, mount_from=["nowhere/demo"])
    assert fresh.moved.blobs_sent == blobs and fresh.moved.blobs_mounted == 0
    cancelled = [r for r in registry.requests() if r.method == "DELETE" and "/other/blobs/uploads/" in r.path and r.status == 204]
    assert len(cancelled) == blobs  # the session each refused mount opened was closed
