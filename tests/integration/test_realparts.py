"""The real parts the integration tests stand on: a private dockerd and plain-HTTP registries."""

from __future__ import annotations

import gzip
import io
import ipaddress
import json
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.realparts import (
    ENGINE_BINARIES,
    DockerEngine,
    Registry,
    RegistryFactory,
    busybox_image,
    fetch,
    processes_mentioning,
    push_to_registry,
    require,
    sha256_digest,
    start_docker_engine,
    start_registry,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT_MANIFESTS = {"Accept": ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])}
HTTPD = ["/bin/sh", "-c", "busybox mkdir /www && echo sealift > /www/index.html && exec busybox httpd -f -p 8080 -h /www"]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def eventually(probe: Callable[[], bytes], *, timeout: float = 15.0) -> bytes:
    """``probe()``'s first answer that does not raise OSError, retried for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return probe()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --- the CI rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ci", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)], ids=["ci-fails", "local-skips"])
def test_missing_binary_fails_under_ci_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(outcome, match="dockerd not found on PATH"):
        start_docker_engine()


@pytest.mark.docker
def test_daemon_that_cannot_start_fails_under_ci_with_its_log_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for binary in ENGINE_BINARIES:
        require(binary)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="dockerd exited before it was ready") as caught:
        start_docker_engine(extra_args=["--no-such-flag"])
    assert "unknown flag: --no-such-flag" in str(caught.value)
    logged = re.search(r"last lines of (/tmp/sl-dk-\w+)/dockerd.log", str(caught.value))
    assert logged is not None
    workdir = Path(logged[1])
    assert not workdir.exists()
    assert processes_mentioning(str(workdir)) == []


@pytest.mark.registry
def test_registry_that_cannot_start_fails_under_ci_with_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    require("docker-registry")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="docker-registry exited before it was ready") as caught:
        start_registry(config={"storage": {"inmemory": {}}})
    assert "inmemory" in str(caught.value)


# --- the engine -----------------------------------------------------------------------------


@pytest.mark.docker
def test_engine_is_our_own_daemon_and_reports_its_version(docker_engine: DockerEngine) -> None:
    version = docker_engine.client.version()
    assert version["Os"] == "linux"
    assert version["Version"]
    assert docker_engine.client.api.api_version == version["ApiVersion"]
    assert tuple(map(int, version["ApiVersion"].split("."))) >= (1, 24)
    assert docker_engine.client.info()["DockerRootDir"] == str(docker_engine.data_root)
    assert len(docker_engine.host) < 108


@pytest.mark.docker
def test_env_points_subprocesses_at_the_engine(docker_engine: DockerEngine) -> None:
    code = "import docker; c = docker.from_env(); print(c.info()['DockerRootDir']); c.close()"
    done = subprocess.run([sys.executable, "-c", code], env=docker_engine.env(), capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(docker_engine.data_root)


@pytest.mark.docker
def test_busybox_image_runs_and_prints_hello(docker_engine: DockerEngine) -> None:
    image_id = busybox_image(docker_engine, f"{unique('sealift-test/busybox')}:hello")
    assert image_id.startswith("sha256:")
    assert docker_engine.client.images.get(image_id).attrs["Config"]["Cmd"] == ["/bin/sh", "-c", "echo hello"]
    assert docker_engine.client.containers.run(image_id, network_mode="none", remove=True) == b"hello\n"


@pytest.mark.docker
def test_published_port_and_bridge_traffic_work(docker_engine: DockerEngine) -> None:
    client = docker_engine.client
    image_id = busybox_image(docker_engine, f"{unique('sealift-test/busybox')}:httpd")
    server = client.containers.run(image_id, HTTPD, detach=True, ports={"8080/tcp": ("127.0.0.1", None)})
    try:
        server.reload()
        port = server.ports["8080/tcp"][0]["HostPort"]
        assert eventually(lambda: fetch(f"http://127.0.0.1:{port}/").body) == b"sealift\n"
        address = server.attrs["NetworkSettings"]["IPAddress"]
        assert ipaddress.ip_address(address) in docker_engine.subnet
        wget = ["busybox", "wget", "-q", "-O", "-", f"http://{address}:8080/"]
        assert client.containers.run(image_id, wget, remove=True) == b"sealift\n"
    finally:
        server.remove(force=True)


@pytest.mark.docker
def test_user_network_resolves_names_inside_the_engines_block(docker_engine: DockerEngine) -> None:
    client = docker_engine.client
    image_id = busybox_image(docker_engine, f"{unique('sealift-test/busybox')}:net")
    network = client.networks.create(unique("sl-net"))
    try:
        assert ipaddress.IPv4Network(network.attrs["IPAM"]["Config"][0]["Subnet"]).subnet_of(docker_engine.subnet)
        server = client.containers.run(image_id, HTTPD, detach=True, name=unique("web"), network=network.name)
        wget = ["sh", "-c", f"for i in 1 2 3 4 5; do busybox wget -q -O - http://{server.name}:8080/ && exit; sleep 1; done"]
        assert client.containers.run(image_id, wget, network=network.name, remove=True) == b"sealift\n"
        server.remove(force=True)
    finally:
        network.remove()


# --- the registry ---------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.registry
def test_registry_takes_a_skopeo_push_from_the_engine(docker_engine: DockerEngine, registry: Registry) -> None:
    tag = f"{unique('sealift-test/busybox')}:push"
    image_id = busybox_image(docker_engine, tag)
    push_to_registry(f"docker-daemon:{tag}", f"{registry.address}/test/busybox:1", src_daemon_host=docker_engine.host)
    got = fetch(f"{registry.url}/v2/test/busybox/manifests/1", headers=ACCEPT_MANIFESTS)
    assert got.status == 200
    assert got.headers["docker-content-digest"] == sha256_digest(got.body)
    manifest = json.loads(got.body)
    assert got.headers["content-type"] == manifest["mediaType"]
    assert manifest["config"]["digest"] == image_id


@pytest.mark.docker
@pytest.mark.registry
def test_engine_pulls_from_the_loopback_registry_over_plain_http(docker_engine: DockerEngine, registry: Registry) -> None:
    client = docker_engine.client
    tag = f"{unique('sealift-test/busybox')}:pull"
    image_id = busybox_image(docker_engine, tag)
    push_to_registry(f"docker-daemon:{tag}", f"{registry.address}/test/pull:1", src_daemon_host=docker_engine.host)
    client.images.remove(image_id, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image_id)
    pulled = client.images.pull(f"{registry.address}/test/pull", tag="1")
    assert pulled.id == image_id
    assert client.containers.run(pulled.id, network_mode="none", remove=True) == b"hello\n"


def _oci_layout(directory: Path, tag: str) -> dict[str, str]:
    """Write a one-layer OCI image layout tagged ``tag``; return the digests by role."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    layer = gzip.compress(raw.getvalue(), mtime=0)  # compressed, so skopeo copies it unchanged
    rootfs = {"type": "layers", "diff_ids": [sha256_digest(raw.getvalue())]}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _blob(directory, config, "application/vnd.oci.image.config.v1+json"),
            "layers": [_blob(directory, layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
        }
    ).encode()
    entry = {**_blob(directory, manifest, OCI_MANIFEST), "annotations": {"org.opencontainers.image.ref.name": tag}}
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return {"manifest": sha256_digest(manifest), "layer": sha256_digest(layer)}


def _blob(directory: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = sha256_digest(data)
    path = directory / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


@pytest.mark.registry
def test_registries_chain_as_a_pull_through_mirror(registry_factory: RegistryFactory, tmp_path: Path) -> None:
    upstream = registry_factory()
    mirror = registry_factory(config={"proxy": {"remoteurl": upstream.url}})
    assert upstream.address != mirror.address
    digests = _oci_layout(tmp_path, "v1")
    push_to_registry(f"oci:{tmp_path}:v1", f"{upstream.address}/test/hello:v1")
    for each in (upstream, mirror):
        got = fetch(f"{each.url}/v2/test/hello/manifests/v1", headers=ACCEPT_MANIFESTS)
        assert (got.status, got.headers["docker-content-digest"]) == (200, digests["manifest"])
        assert sha256_digest(got.body) == digests["manifest"]
    blob = fetch(f"{mirror.url}/v2/test/hello/blobs/{digests['layer']}")
    assert (blob.status, sha256_digest(blob.body)) == (200, digests["layer"])


# --- two daemons on one host ----------------------------------------------------------------


def _other_dockerd_hosts() -> list[str]:
    """``unix://`` hosts of running dockerd not started by any test session, whose socket exists.

    Test engines (``/tmp/sl-dk-*``) are left out: another session may stop its own at any moment.
    """
    hosts = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if argv and Path(argv[0]).name == "dockerd":
            hosts.append(_host_flag(argv) or "unix:///var/run/docker.sock")
    return [h for h in hosts if h.startswith("unix://") and not h.startswith("unix:///tmp/sl-dk-") and Path(h[7:]).is_socket()]


def _host_flag(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("-H", "--host") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(("--host=", "-H=")):
            return arg.split("=", 1)[1]
    return None


def _iptables_rules() -> str:
    """The host's filter and nat rules, as ``iptables -S`` prints them ("" without iptables)."""
    if shutil.which("iptables") is None:
        return ""
    tables = [subprocess.run(["iptables", "-w", "-t", t, "-S"], capture_output=True, text=True, check=True) for t in ("filter", "nat")]
    return "".join(t.stdout for t in tables)


@pytest.mark.docker
def test_second_engine_runs_beside_the_first_and_any_other_dockerd(docker_engine: DockerEngine) -> None:
    others = _other_dockerd_hosts()
    with start_docker_engine() as second:
        bridge, subnet, workdir = second.bridge, second.subnet, second.workdir
        assert bridge != docker_engine.bridge
        assert not subnet.overlaps(docker_engine.subnet)
        forward_rule = f"-s {subnet} -d {subnet}"
        assert shutil.which("iptables") is None or forward_rule in _iptables_rules()
        # a container running in each engine at once, each on its own bridge
        running = [_sleeper(engine) for engine in (docker_engine, second)]
        for engine, container in zip((docker_engine, second), running, strict=True):
            container.reload()
            assert container.status == "running"
            assert ipaddress.ip_address(container.attrs["NetworkSettings"]["IPAddress"]) in engine.subnet
        running[0].remove(force=True)
        for host in others:  # e.g. a stray dockerd using docker0: it still answers
            other = docker.DockerClient(base_url=host, version="auto", timeout=10)
            try:
                assert other.ping()
            finally:
                other.close()
        # neither test engine wrote NAT or filter rules for its bridge (docker's would say -i/-o BRIDGE)
        assert not re.search(rf"-[io] ({docker_engine.bridge}|{bridge})\b", _iptables_rules())
    assert processes_mentioning(str(workdir)) == []
    assert not workdir.exists()
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    assert forward_rule not in _iptables_rules()


def _sleeper(engine: DockerEngine) -> Any:
    image_id = busybox_image(engine, f"{unique('sealift-test/busybox')}:sleep")
    return engine.client.containers.run(image_id, ["sleep", "60"], detach=True)
