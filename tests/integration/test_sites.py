"""Two sites, one application bundle: each site's overlay brings its devices their own credentials,
through delivery and on the real engine.

Site ``north`` is connected: the bundle and the overlays are pushed to an origin registry, the
site's mirror syncs only its own overlay, and its device polls the mirror. Site ``south`` never
connects: its device is a host of its own (a network namespace with nothing but loopback, and an
engine in it), running ``sealift-updater run --watch`` on the media its operator copies in. Then
the credentials rotate (new overlays only: no image or model crosses again), and a device revoked
in between can open nothing built after its revocation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from securesystemslib.dsse import Envelope

from bundler.cli import cli as sealift
from bundler.keys import PASSPHRASE_ENV
from tests.builders import EXAMPLE_DIR, answer, example_releases, manifest_digests, only_app, unmount_secrets
from tests.envelope import result_of
from tests.fakes import NoEngine
from tests.realparts import DockerEngine, NetNamespace, Registry, RegistryFactory, start_docker_engine, start_net_namespace
from updater.daemon import Daemon
from updater.docker_runtime import DockerRuntime
from updater.errors import Refused
from updater.identity import DeviceIdentity
from updater.install import Installer
from updater.overlay import check_overlay
from updater.poll import RegistryPoller
from updater.profiles import builtin_profile_dir, load_profiles
from updater.sealed import Identity, open_sealed
from updater.transfer import EMPTY_CONFIG
from updater.trust import TrustedState

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]
pytestmark = [pytest.mark.docker, pytest.mark.registry]
TOKENS = {"north": ("tok-north-first-41c7", "tok-north-rotated-a09e"), "south": ("tok-south-first-7d22", "tok-south-rotated-e5b0")}
REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "examples" / "vision-app" / "golden" / "input.txt"


def run(*args: str) -> dict[str, Any] | list[Any]:
    result = CliRunner().invoke(sealift, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] | list[Any] = result_of(result.stdout)
    return data


def site_overlay(work: Path, site: str, version: str, token: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`sealift overlay build` for ``site`` (its api-token is ``token``), signed with `sealift repo add`."""
    (work / "sites").mkdir(exist_ok=True)
    (work / "sites" / f"{site}.yaml").write_text(f"version: {version}\nfits: '>=1.0.0 <2.0.0'\n"
                                                  f"environment:\n  vision: {{SITE_ID: {site}}}\n")
    monkeypatch.setenv("VISION_API_TOKEN", token)
    built = run("overlay", "build", str(work / "sealift-1.0.0.yaml"), "--site", site, "--inventory", str(work / "devices.yaml"),
                "--out", str(work / "overlays" / f"{site}-{version}"), "--allow-dir", str(EXAMPLE_DIR))
    monkeypatch.delenv("VISION_API_TOKEN")
    assert isinstance(built, dict)
    path = Path(built["path"])
    run("repo", "add", str(work / "signing" / "repo"), str(path), "--keys", str(work / "signing" / "keys"))
    return path


def infer(host: NetNamespace | None, token: str | None) -> int:
    """The status of /infer with ``token`` (200 answers, 401 refuses), asked on ``host`` (None: this one)."""
    if host is None:
        return answer("/infer", GOLDEN.read_bytes(), token=token)[0]
    script = f"from tests.builders import answer; print(answer('/infer', open({str(GOLDEN)!r}, 'rb').read(), token={token!r})[0])"
    done = subprocess.run(host.command([sys.executable, "-c", script]), capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    return int(done.stdout)


def updater_run(host: NetNamespace, engine: DockerEngine, state: Path, watch: Path) -> subprocess.CompletedProcess[str]:
    """One pass of `sealift-updater run --watch` on the isolated ``host``, with its own engine."""
    argv = [str(Path(sys.executable).parent / "sealift-updater"), "--state-dir", str(state), "run", "--watch", str(watch), "--once",
            "--profile", "x86_64-cpu"]
    return subprocess.run(host.command(argv), capture_output=True, text=True, timeout=300, check=False, env=engine.env())


def device_reads(mirror: Registry, since: int) -> set[str]:
    """The blobs the mirror served in full after its first ``since`` requests."""
    return {r.blob for r in mirror.requests()[since:] if r.method == "GET" and r.status == 200 and r.blob}


def test_two_sites_run_one_bundle_with_their_own_secrets_rotate_them_and_a_revoked_device_opens_nothing_new(
        registry_factory: RegistryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path
    built = example_releases(work, python=sys.executable, secrets=True, versions=("1.0.0",))
    app = built["1.0.0"]
    monkeypatch.setenv(PASSPHRASE_ENV, "test passphrase")
    # three devices enroll: one per site with an engine, and a second one at north, revoked later
    states = {name: work / f"device-{name}" for name in ("north", "south", "spare")}
    ids = {}
    for name, state in states.items():
        TrustedState(state).init(built["root"])
        record = DeviceIdentity(state).enroll(site="north" if name == "spare" else name, profile="x86_64-cpu")
        (work / f"{name}.json").write_text(json.dumps(record))
        added = run("devices", "add", str(work / f"{name}.json"), "--inventory", str(work / "devices.yaml"))
        assert isinstance(added, list) and [a["site"] for a in added] == [record["site"]]
        ids[name] = added[0]["device"]
    origin, mirror = registry_factory(), registry_factory()
    south_host = start_net_namespace()
    engines: dict[str, DockerEngine] = {}
    try:
        engines = {"north": start_docker_engine(), "south": start_docker_engine(netns=south_host)}
        hosts = {"north": None, "south": south_host}
        installer = Installer(state_dir=states["north"], runtime=DockerRuntime(engines["north"].client), profile=CPU)
        logs: list[str] = []  # what north's daemon and south's updater said
        north = Daemon(installer, None, interval=10, log=logs.append,
                       pollers=[RegistryPoller(f"{mirror.address}/vision-app", installer=installer, profile=CPU, plain_http=True)])
        usb = work / "usb"  # south's watched directory, where the site's operator copies each medium
        usb.mkdir()

        # (1) one bundle, one overlay per site: north through its mirror, south on a medium
        first = {site: site_overlay(work, site, "1.0.0", TOKENS[site][0], monkeypatch) for site in ("north", "south")}
        for path in (app, first["north"], first["south"]):
            run("push", str(path), f"{origin.address}/vision-app", "--plain-http")
        synced = run("mirror", "sync", "--from", f"{origin.address}/vision-app", "--to", mirror.address, "--site", "north",
                     "--plain-http")
        assert isinstance(synced, dict) and {b.get("site") for b in synced["bundles"]} == {None, "north"}  # not south's
        medium = run("export", str(app), str(first["south"]), "--to", str(usb / "stick-1"))
        assert isinstance(medium, dict) and [o["site"] for o in medium["overlays"]] == ["south"]
        assert north.run(once=True) is None
        south = updater_run(south_host, engines["south"], states["south"], usb)
        logs.append(south.stdout + south.stderr)
        assert south.returncode == 0 and 'event="committed"' in logs[-1], logs[-1]
        for site, other in (("north", "south"), ("south", "north")):
            current = only_app(states[site]).load().current
            assert current is not None and (current.version, current.overlay) == ("1.0.0", "1.0.0")
            assert infer(hosts[site], TOKENS[site][0]) == 200
            assert infer(hosts[site], TOKENS[other][0]) == 401 and infer(hosts[site], None) == 401
        apps = {only_app(states[site]).load().current.digest for site in ("north", "south")}  # type: ignore[union-attr]
        assert len(apps) == 1  # the same application release at both sites

        # (2) the spare device is revoked; the credentials rotate with new overlays only
        revoked = run("devices", "revoke", ids["spare"], "--inventory", str(work / "devices.yaml"))
        assert isinstance(revoked, dict) and revoked["device"] == ids["spare"] and revoked["revoked"]
        rotated = {site: site_overlay(work, site, "1.1.0", TOKENS[site][1], monkeypatch) for site in ("north", "south")}
        for path in rotated.values():
            run("push", str(path), f"{origin.address}/vision-app", "--plain-http")
        run("mirror", "sync", "--from", f"{origin.address}/vision-app", "--to", mirror.address, "--site", "north", "--plain-http")
        run("export", str(rotated["south"]), "--to", str(usb / "stick-2"))  # stick-1 stays plugged in: nothing new on it
        images = {site: {i.id for i in engines[site].client.images.list()} for site in engines}
        before = len(mirror.requests())
        assert north.run(once=True) is None
        south = updater_run(south_host, engines["south"], states["south"], usb)
        logs.append(output := south.stdout + south.stderr)
        assert south.returncode == 0 and output.count('event="install"') == 1 and "stick-2" in output, output  # not stick-1 again
        # the release's layers, models and configs (not its manifests, nor the empty config every artifact shares)
        app_blobs = {f"sha256:{p.name}" for p in (app / "blobs" / "sha256").iterdir()} - manifest_digests(app) - {EMPTY_CONFIG.digest}
        assert not device_reads(mirror, before) & app_blobs  # north downloaded no image layer, model or config again
        for site in ("north", "south"):
            current = only_app(states[site]).load().current
            assert current is not None and current.overlay == "1.1.0" and current.digest in apps
            assert {i.id for i in engines[site].client.images.list()} == images[site]  # no image loaded
            assert infer(hosts[site], TOKENS[site][1]) == 200 and infer(hosts[site], TOKENS[site][0]) == 401

        # (3) the revoked device: it could open what was built before, it opens nothing built after
        spare = DeviceIdentity(states["spare"])
        for path, opens in ((first["north"], True), (rotated["north"], False)):
            info = check_overlay(path)
            identity = Identity(app=info.name, site=info.site, version=info.version)
            if opens:
                assert open_sealed(info.sealed, identity, ids["spare"], spare.key()) == {"api-token": TOKENS["north"][0].encode()}
            else:
                with pytest.raises(Refused, match="not sealed to this device"):
                    open_sealed(info.sealed, identity, ids["spare"], spare.key())
        # and as a device: its poll of the site mirror is refused on the overlay, before the release is even downloaded
        spare_installer = Installer(state_dir=states["spare"], runtime=NoEngine(), profile=CPU)
        before = len(mirror.requests())
        with pytest.raises(Refused, match="not sealed to this device"):
            RegistryPoller(f"{mirror.address}/vision-app", installer=spare_installer, profile=CPU, plain_http=True).poll()
        assert not device_reads(mirror, before) & app_blobs, device_reads(mirror, before) & app_blobs
        assert only_app(states["spare"]).load().current is None
        assert not any((states["spare"] / "apps").glob("*/slots/*/*"))  # nothing staged

        # no registry blob, medium, log or file of the builder holds a secret value
        values = [t.encode() for pair in TOKENS.values() for t in pair]
        assert logs and not any(v.decode() in line for line in logs for v in values)
        for registry in (origin, mirror):
            for path in registry.workdir.rglob("*"):
                assert not (path.is_file() and any(v in path.read_bytes() for v in values)), path
        for path in work.rglob("*"):
            if path.is_file() and not any(p.name == "run" for p in path.parents):
                assert not any(v in path.read_bytes() for v in values), path
        # nor a device's signed reports (their payload is base64 in the envelope): north's, and south's on its media
        reports = [*states["north"].glob("reports/0*.json"), *usb.glob("*/sealift-reports/*/*.json")]
        assert len({p.parent.name for p in reports}) >= 2, reports
        payloads = [Envelope.from_dict(json.loads(path.read_bytes())).payload for path in reports]
        assert any(b'"kind":"committed"' in payload for payload in payloads)
        for path, payload in zip(reports, payloads, strict=True):
            assert not any(v in payload for v in values), path
    finally:
        for site, engine in engines.items():
            engine.stop()
            unmount_secrets(states[site])
        south_host.delete()
