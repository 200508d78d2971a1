"""Containers reach their accelerator on every profile, on the real engine (Debian's Docker 20.10).

The session's engine has a stand-in ``nvidia`` runtime (runc) and a stand-in NVIDIA hook, so Docker
offers its ``nvidia`` device driver; the device nodes are stand-ins made with ``mknod`` in the
test's own directory, which the test's copies of the shipped profiles name (each copy amd64, so
its image runs here). One example spec, whose service asks `x-sealift: {accelerator: preferred}`
and whose second service sets most of the other Compose fields, is built for every profile and
installed on a device of each; the created containers' settings are checked field by field. A
third service is on the host's network, where its health check reaches it.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.spec import load_spec
from tests.builders import EXAMPLE_DIR, FAST_PORT, make_example_images, only_app, signed
from tests.envelope import error_of, result_of
from tests.realparts import DockerEngine
from updater.docker_runtime import DockerRuntime
from updater.errors import DeviceFault
from updater.install import Installer
from updater.profiles import Profile, builtin_profile_dir, load_profiles
from updater.trust import TrustedState

GROUPS = {"hailo0": 4242, "accel/accel0": 4243}  # the stand-in nodes' owning groups
NODES = ("nvidiactl", "hailo0", "apex_0", "accel/accel0")
CHATTER = """\
  chatter:
    image: vision
    entrypoint: ["sh", "-c", "while :; do echo 'a line of about sixty-four bytes to fill the rotated log file'; done"]
    healthcheck: {test: ["NONE"]}
    user: "1000:1000"
    group_add: ["2000"]
    init: true
    read_only: true
    tmpfs: ["/scratch:size=1m,mode=1777"]
    cap_drop: [ALL]
    cap_add: [NET_BIND_SERVICE]
    security_opt: [no-new-privileges]
    ulimits: {nofile: {soft: 1024, hard: 2048}}
    sysctls: {net.core.somaxconn: "512"}
    extra_hosts: ["historian.plant=10.20.0.5"]
    shm_size: 8m
    mem_limit: 64m
    cpus: 0.5
    pids_limit: 50
    labels: {site.role: chatter}
    working_dir: /scratch
    stop_signal: SIGINT
    stop_grace_period: 3s
    restart: on-failure:5
    logging:
      driver: json-file
      options: {max-size: 64k, max-file: "2"}
  on-host:
    image: vision
    network_mode: host
    environment: {VISION_PORT: "HOST_PORT"}
    volumes: ["detector:/models/detector.model:ro", "app-config:/etc/vision/app.conf:ro"]
    healthcheck: {test: ["NONE"]}
""".replace("HOST_PORT", str(FAST_PORT + 1))


@pytest.fixture(scope="module")
def hardware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in device nodes (character devices, as /dev/null is) with the owning groups of GROUPS."""
    root = tmp_path_factory.mktemp("hardware")
    for name in NODES:
        node = root / "dev" / name
        node.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(node, 0o660 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(node, 0, GROUPS.get(name, 0))
    return root


@pytest.fixture(scope="module")
def profiles(hardware: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Profile]:
    """The shipped profiles, each amd64, their device paths moved onto the stand-ins (at /dev/... inside)."""
    folder = tmp_path_factory.mktemp("profiles")
    for path in builtin_profile_dir().glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data["platform"] = {"os": "linux", "architecture": "amd64"}
        access = data.get("container", {}).get("accelerator", {})
        access["devices"] = [{"one_of": [f"{hardware}{p}" for p in d["one_of"]]} if isinstance(d, dict) else f"{hardware}{d}:{d}"
                             for d in access.get("devices", [])]
        access["group_add"] = [{"group_of": f"{hardware}{g['group_of']}"} for g in access.get("group_add", [])]
        access["requires"] = [f"{hardware}{p}" for p in access.get("requires", [])]
        for key in [k for k, v in access.items() if not v]:
            del access[key]
        (folder / path.name).write_text(yaml.safe_dump(data))
    return load_profiles([folder])


@pytest.fixture(scope="module")
def bundles(profiles: dict[str, Profile], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example (one http check, 1 s stabilisation, a chatty second service) for every profile, 1.0.0;
    and 1.0.1 for rpi5-hailo8. Signed; "root" is the root metadata."""
    make_example_images(sys.executable)
    src = tmp_path_factory.mktemp("spec")
    compose = (EXAMPLE_DIR / "compose.yaml").read_text().replace('"8080:8080"', f'"{FAST_PORT}:8080"')
    (src / "compose.yaml").write_text(re.sub(r"\n    secrets: \[api-token\][^\n]*", "", compose) + CHATTER)
    text = (EXAMPLE_DIR / "sealift.yaml").read_text()
    for relative in ("build/images/vision-app", "models/", "config/", "golden/"):
        text = text.replace(f" {relative}", f" {EXAMPLE_DIR}/{relative}").replace(f":{relative}", f":{EXAMPLE_DIR}/{relative}")
    text = text[:text.index("\nhealth:")] + "\nhealth:\n  deadline: 30s\n  stabilisation: 1s\n  checks:\n" \
        "    - {name: healthz, type: http, service: vision, port: 8080, path: /healthz}\n" \
        f"    - {{name: on-host, type: http, service: on-host, port: {FAST_PORT + 1}, path: /healthz}}\n"
    built: dict[str, Path] = {}
    out = tmp_path_factory.mktemp("bundles")
    for version, names in (("1.0.0", tuple(profiles)), ("1.0.1", ("rpi5-hailo8",))):
        (src / "sealift.yaml").write_text(text.replace("version: 1.0.0", f"version: {version}"))
        spec = load_spec(src / "sealift.yaml", allowed_dirs=[EXAMPLE_DIR])
        for b in build_bundles(spec, select_profiles(spec, profiles, names), BuildOptions(out=out, epoch=0)):
            built[f"{b.profile}" if version == "1.0.0" else f"{b.profile} {version}"] = b.path
    built["root"] = signed(list(built.values()), out / "signing")
    return built


def host_config(engine: DockerEngine, slot: str, service: str) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs = engine.client.api.inspect_container(f"sealift-vision-app-{slot}-{service}")
    return attrs["HostConfig"], attrs["Config"]


def in_container(engine: DockerEngine, slot: str, service: str, command: str) -> str:
    code, output = engine.client.containers.get(f"sealift-vision-app-{slot}-{service}").exec_run(["sh", "-c", command])
    assert code == 0, output
    return str(output.decode())


ACCESS = {  # what reaches each profile's accelerator, as the engine records it
    "x86_64-nvidia": {"DeviceRequests": [{"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                          "Options": {}}]},
    "jetson-orin": {"Runtime": "nvidia"},
    "rpi5-hailo8": {"Devices": [{"PathOnHost": "{hw}/dev/hailo0", "PathInContainer": "/dev/hailo0", "CgroupPermissions": "rwm"}],
                    "GroupAdd": ["4242"]},
    "arm64-coral": {"Devices": [{"PathOnHost": "{hw}/dev/apex_0", "PathInContainer": "{hw}/dev/apex_0", "CgroupPermissions": "rwm"}]},
    "x86_64-intel-npu": {"Devices": [{"PathOnHost": "{hw}/dev/accel/accel0", "PathInContainer": "/dev/accel/accel0",
                                      "CgroupPermissions": "rwm"}], "GroupAdd": ["4243"]},
    "x86_64-cpu": {"Runtime": "runc", "Devices": None, "DeviceRequests": None, "GroupAdd": None},
}


def installer(state: Path, engine: DockerEngine, root: Path, profile: Profile) -> Installer:
    TrustedState(state).init(root)
    return Installer(state_dir=state, runtime=DockerRuntime(engine.client), profile=profile, log=lambda _: None)


@pytest.mark.docker
def test_each_profile_reaches_its_accelerator_with_limits_and_rotated_logs(
        bundles: dict[str, Path], profiles: dict[str, Profile], hardware: Path, docker_engine: DockerEngine, tmp_path: Path) -> None:
    runtime = DockerRuntime(docker_engine.client)
    try:
        for name, expected in ACCESS.items():
            outcome = installer(tmp_path / name, docker_engine, bundles["root"], profiles[name]).install(bundles[name])
            assert outcome.committed, (name, outcome.reason)
            host, _ = host_config(docker_engine, "a", "vision")
            for key, value in expected.items():
                assert host[key] == _on(hardware, value), (name, key)
            assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (256 << 20, 10**9, 200), name
            assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": str(10 << 20), "max-file": "3"}}, name
            assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}, name
            if name == "x86_64-nvidia":  # Docker's nvidia driver ran the toolkit's hook and named the GPUs
                assert "NVIDIA_VISIBLE_DEVICES=all" in in_container(docker_engine, "a", "vision", 'tr "\\0" "\\n" < /proc/1/environ')
                assert "prestart" in docker_engine.nvidia_hook_log.read_text()
            if name == "rpi5-hailo8":  # the node is there, a character device, and the container is in its group
                assert in_container(docker_engine, "a", "vision", "ls -l /dev/hailo0").startswith("c")
                assert "4242" in in_container(docker_engine, "a", "vision", "id -G").split()
            if name == "x86_64-cpu":
                check_the_other_fields(docker_engine)
            runtime.stop("vision-app", "a")
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)


def check_the_other_fields(engine: DockerEngine) -> None:
    on_host, _ = host_config(engine, "a", "on-host")  # its check passed on 127.0.0.1, where it listens
    assert on_host["NetworkMode"] == "host" and not on_host["PortBindings"]
    host, config = host_config(engine, "a", "chatter")
    assert config["Entrypoint"][:2] == ["sh", "-c"] and config["Healthcheck"]["Test"] == ["NONE"]
    assert config["User"] == "1000:1000" and config["WorkingDir"] == "/scratch" and config["Labels"]["site.role"] == "chatter"
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGINT", 3)
    assert host["GroupAdd"] == ["2000"] and host["Init"] is True and host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/scratch": "size=1m,mode=1777"}
    assert (host["CapDrop"], host["CapAdd"], host["SecurityOpt"]) == (["ALL"], ["NET_BIND_SERVICE"], ["no-new-privileges:true"])
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert host["Sysctls"] == {"net.core.somaxconn": "512"} and host["ExtraHosts"] == ["historian.plant:10.20.0.5"]
    assert (host["ShmSize"], host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (8 << 20, 64 << 20, 5 * 10**8, 50)
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
    # the log stops growing at its rotation size: one rotated file and the current one, each at most 64 KiB
    log = Path(engine.client.api.inspect_container("sealift-vision-app-a-chatter")["LogPath"])
    deadline = time.monotonic() + 20
    while not Path(f"{log}.1").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Path(f"{log}.1").exists()  # it wrote more than 64 KiB
    for _ in range(10):  # sizes seen while it rotates (a file may be missing for an instant)
        assert not Path(f"{log}.2").exists()
        assert _size(log) <= (64 << 10) + 256 and _size(Path(f"{log}.1")) <= (64 << 10) + 256
        time.sleep(0.2)


def _on(hardware: Path, value: Any) -> Any:
    """``value`` with the stand-in nodes' folder put in for {hw}."""
    if isinstance(value, list):
        return [_on(hardware, v) for v in value]
    if isinstance(value, dict):
        return {k: _on(hardware, v) for k, v in value.items()}
    return value.replace("{hw}", str(hardware)) if isinstance(value, str) else value


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.docker
def test_a_device_without_the_accelerator_refuses_the_release_before_the_switch(
        bundles: dict[str, Path], profiles: dict[str, Profile], hardware: Path, docker_engine: DockerEngine, tmp_path: Path) -> None:
    device = installer(tmp_path / "device", docker_engine, bundles["root"], profiles["rpi5-hailo8"])
    node, aside = hardware / "dev/hailo0", hardware / "dev/hailo0.unplugged"
    try:
        assert device.install(bundles["rpi5-hailo8"]).committed
        running = docker_engine.client.containers.get("sealift-vision-app-a-vision")
        node.rename(aside)  # the driver unloaded: its node is gone
        with pytest.raises(DeviceFault, match=rf"vision-app 1\.0\.1 for rpi5-hailo8 needs what this device lacks: service vision "
                                              rf"needs device {re.escape(str(node))}, which is absent"):
            device.install(bundles["rpi5-hailo8 1.0.1"])
        state = only_app(tmp_path / "device").load()
        assert state.current is not None and state.current.version == "1.0.0" and state.candidate is None
        assert state.fault == "device" and "needs device" in state.reason
        running.reload()
        assert running.status == "running" and running.attrs["RestartCount"] == 0  # untouched
        assert not docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.slot=b"})
        assert not only_app(tmp_path / "device").slot_dir("b").exists()  # nothing staged
    finally:
        if aside.exists():
            aside.rename(node)
        for container in docker_engine.client.containers.list(all=True, filters={"label": "dev.sealift.app=vision-app"}):
            container.remove(force=True)


@pytest.mark.docker
def test_detect_asks_the_engine_for_the_runtime_the_profile_needs(docker_engine: DockerEngine, tmp_path: Path) -> None:
    for name, runtime in (("with-runtime", "nvidia"), ("without-runtime", "kata")):  # this engine has nvidia, not kata
        (tmp_path / name).mkdir()
        (tmp_path / name / "this-host.yaml").write_text(
            "name: this-host\nplatform: {os: linux, architecture: amd64}\ncompatible: test/this-host\n"
            f"detect: {{all: [{{cpu_arch: {os.uname().machine}}}]}}\npriority: 999\n"
            f"container: {{accelerator: {{runtime: {runtime}}}}}\n")
    run = [sys.executable, "-c", "from updater.cli import main; main()", "detect", "--json", "--profiles-dir"]
    usable = subprocess.run([*run, str(tmp_path / "with-runtime")], capture_output=True, text=True, timeout=60,
                            env=docker_engine.env(), check=False)
    assert usable.returncode == 0, usable.stderr
    assert result_of(usable.stdout)["accelerator"] == {"declared": True, "usable": True, "missing": [], "engine_checked": True}
    lacking = subprocess.run([*run, str(tmp_path / "without-runtime")], capture_output=True, text=True, timeout=60,
                             env=docker_engine.env(), check=False)
    assert lacking.returncode == 5, lacking.stderr
    error, lacked = error_of(lacking.stdout)
    (missing,) = lacked["accelerator"]["missing"]
    assert error["kind"] == "device" and missing in error["message"]
    assert missing.startswith("the container runtime kata, which the engine lacks (it has ") and "nvidia" in missing
