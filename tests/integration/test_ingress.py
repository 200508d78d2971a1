"""The ingress on the real engine with Debian's HAProxy: an application whose service publishes no
host port is reached through its route; an update, a rollback on demand and a release that never
turns healthy each switch with no failed request under continuous load on kept-alive connections;
an updater killed as it commits converges to one release that every request reaches; a second
application claiming the same route is refused before anything is staged. A route with TLS is
served over HTTPS with the site's own certificate, which its overlay delivers sealed to the device
and which never leaves memory."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bundler.devices import Inventory
from bundler.keys import Keyring
from bundler.overlay import build_overlay
from bundler.repo import Repository
from bundler.spec import load_spec
from tests.builders import EXAMPLE_DIR, example_releases, unmount_secrets, updater_killed_at
from tests.ingress import HttpLoad, running_haproxy, self_signed
from tests.realparts import DockerEngine
from updater.docker_runtime import DockerRuntime
from updater.errors import Conflict
from updater.identity import DeviceIdentity
from updater.install import Installer
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState

CPU = load_profiles([builtin_profile_dir()])["x86_64-cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A device state directory with an ingress, HAProxy running from its configuration, and its port."""
    state, port = tmp_path / "device", free_port()
    with running_haproxy(state, port, log=tmp_path / "haproxy.log"):
        yield state, port


@pytest.mark.docker
def test_switches_behind_the_ingress_drop_no_request(tmp_path: Path, haproxy: tuple[Path, int],
                                                      docker_engine: DockerEngine) -> None:
    state, port = haproxy
    (tmp_path / "releases").mkdir()
    releases = example_releases(tmp_path / "releases", python=sys.executable, versions=("1.0.0", "1.1.0", "1.3.0"), routed=True,
                                also="twin")
    TrustedState(state).init(releases["root"])
    installer = Installer(state_dir=state, runtime=DockerRuntime(docker_engine.client), profile=CPU)
    try:
        assert installer.install(releases["1.0.0"]).committed
        (container,) = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        assert not any(container.attrs["NetworkSettings"]["Ports"].values())  # no host port: only the ingress reaches it
        with HttpLoad("127.0.0.1", port) as load:
            time.sleep(0.5)
            update = installer.install(releases["1.1.0"])
            assert update.committed and update.release.slot == "b", update.reason
            back = installer.rollback()
            assert back.committed and back.release.version == "1.0.0", back.reason
            broken = installer.install(releases["1.3.0"])  # starts, never turns healthy: the routes never move to it
            assert not broken.committed and "failed" in broken.reason
            time.sleep(0.5)
        assert load.succeeded > 100 and load.failed == 0, f"{load.failed} of {len(load.done)} requests failed"
        serving = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        assert [c.labels["dev.sealift.version"] for c in serving] == ["1.0.0"]
        # killed just as it commits (the routes moved, the old release stopped or not): the next start
        # converges, and every request through the ingress succeeds again
        updater_killed_at(state, ["install", str(releases["1.1.0"]), "--profile", "x86_64-cpu"], "[7/7] commit",
                          env=docker_engine.env())
        converged = installer.recover()["vision-app"]
        assert not isinstance(converged, Exception) and converged.current is not None and converged.candidate is None
        running = docker_engine.client.containers.list(filters={"label": "dev.sealift.app=vision-app"})
        assert [c.labels["dev.sealift.slot"] for c in running] == [converged.current.slot]
        with HttpLoad("127.0.0.1", port) as after:
            time.sleep(1)
        assert after.succeeded > 20 and after.failed == 0, f"{after.failed} of {len(after.done)} failed after the recovery"
        with pytest.raises(Conflict, match=r"twin 1\.0\.0 cannot run beside the other applications: twin routes \*/, which "
                                           r"vision-app routes already"):
            installer.install(releases["twin-1.0.0"])
        assert not installer.apps.slots("twin").slot_dir("a").exists()
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)


HOST = "vision.site.test"


@pytest.mark.docker
def test_https_through_the_ingress_with_the_sites_own_certificate(tmp_path: Path, docker_engine: DockerEngine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "releases").mkdir()
    releases = example_releases(tmp_path / "releases", python=sys.executable, versions=("1.0.0",), routed=True, tls_host=HOST)
    state, port, tls_port = tmp_path / "device", free_port(), free_port()
    TrustedState(state).init(releases["root"])
    # the site's certificate and key travel sealed to the device in the site's overlay
    record = DeviceIdentity(state).enroll(site="demo-site", profile="x86_64-cpu")
    (tmp_path / "record.json").write_text(json.dumps(record))
    Inventory(tmp_path / "devices.yaml").add(tmp_path / "record.json")
    signing = releases["root"].parent.parent.parent
    site_file = (EXAMPLE_DIR / "sites" / "demo-site.yaml").read_text()
    certificates, overlays = [], []
    for version in ("1.0.0", "1.0.1"):  # the second rotates the certificate
        certificate, key = self_signed(HOST)
        for name, value in (("SITE_CERT", certificate), ("SITE_KEY", key), ("VISION_API_TOKEN", b"token")):
            monkeypatch.setenv(name, value.decode())
        (tmp_path / f"site-{version}.yaml").write_text(site_file.replace("version: 1.0.0", f"version: {version}"))
        overlay, _ = build_overlay(load_spec(tmp_path / "releases" / "sealift-1.0.0.yaml", allowed_dirs=[EXAMPLE_DIR]), "demo-site",
                                   inventory=tmp_path / "devices.yaml", out=tmp_path / "overlays",
                                   site_file=tmp_path / f"site-{version}.yaml")
        Repository(signing / "repo", Keyring(signing / "keys", passphrase=lambda: "test passphrase")).add([overlay])
        certificates.append(certificate)
        overlays.append(overlay)
    with running_haproxy(state, port, log=tmp_path / "haproxy.log", tls_port=tls_port):
        installer = Installer(state_dir=state, runtime=DockerRuntime(docker_engine.client), profile=CPU)
        try:
            outcome = installer.install(releases["1.0.0"], overlay=overlays[0])
            assert outcome.committed, outcome.reason
            assert served(tls_port) == certificates[0]  # the site's own, from its overlay
            pem = state / "run" / "ingress" / "vision-app" / f"{HOST}.pem"
            fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", str(state / "run")], capture_output=True, text=True, check=False)
            assert fstype.stdout.strip() == "tmpfs" and pem.stat().st_mode & 0o777 == 0o600  # the key only ever in memory
            assert b"PRIVATE KEY" not in (state / "ingress" / "haproxy.cfg").read_bytes()
            loaded = (state / "ingress" / "loaded").read_text()
            rotated = installer.install(overlays[1])  # the overlay alone: the running release again, with the new certificate
            assert rotated.committed, rotated.reason
            assert served(tls_port) == certificates[1]
            assert (state / "ingress" / "loaded").read_text() == loaded  # through the runtime API: HAProxy was not reloaded
        finally:
            for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
                container.remove(force=True)
            unmount_secrets(state)


def served(tls_port: int) -> bytes:
    """The certificate the ingress presents for HOST (PEM), after checking it serves /healthz over HTTPS."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # which certificate it is, is the question
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:
        tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.rstrip().endswith(b"ok"), answer[:200]
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
