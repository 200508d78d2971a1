"""The Compose subset's container settings: parsed in Compose's meaning, normalised for the
descriptor, resolved per profile at build time, and every bad value refused at build time with
one line naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bundler.resolve import app_for_profile
from bundler.spec import Spec, load_spec
from tests.builders import SPEC, project
from tests.envelope import result_of
from updater.accelerator import DeviceRequest
from updater.appdef import parse_app
from updater.container import Container
from updater.errors import InputError
from updater.profiles import builtin_profile_dir, load_profiles
from updater.yamlfile import Field

PROFILES = load_profiles([builtin_profile_dir()])
HEAD = SPEC[:SPEC.index("\napp:\n") + 1]
TAIL = SPEC[SPEC.index("health:\n"):]


def spec_with(tmp_path: Path, service: str, *, extra: str = "") -> Path:
    """A project whose one service, `app`, has the fields in ``service`` (YAML at the service's indent),
    declared in compose.yaml; ``extra`` goes at the spec's top level."""
    path = project(tmp_path, spec=HEAD.replace("profiles: [", "profiles: [arm64-coral, rpi5-hailo8, x86_64-intel-npu, ")
                   + "app: compose.yaml\n" + TAIL + extra)
    (tmp_path / "compose.yaml").write_text("services:\n  app:\n    image: app\n    ports: ['8080:8080']\n"
                                           + textwrap.indent(textwrap.dedent(service), "    "))
    return path


def loaded(tmp_path: Path, service: str, **kw: str) -> Spec:
    return load_spec(spec_with(tmp_path, service, **kw))


FULL = """\
user: "1000:1000"
group_add: [video, "44", {group_of: /dev/dri/renderD128}]
devices: ["/dev/video0:/dev/video0:r", nvidia.com/gpu=all, {one_of: [/dev/apex_0, /dev/bus/usb]},
          {source: /dev/hdmi, target: /dev/out, permissions: rw}, /dev/vdec0]
runtime: nvidia
deploy:
  resources:
    limits: {cpus: "1.5", memory: 1.5g, pids: 100}
    reservations:
      memory: 64m
      devices: [{driver: nvidia, count: 1, capabilities: [gpu, utility]}]
shm_size: 256m
ulimits: {nofile: {soft: 1024, hard: 4096}, memlock: -1}
cap_add: [CAP_NET_RAW, ipc_lock]
cap_drop: [ALL]
security_opt: ["no-new-privileges:true", "apparmor=edge-app"]
read_only: true
tmpfs: /tmp:size=64m,mode=1777
init: true
entrypoint: /app/run --fast "two words"
working_dir: /app
labels: [team=vision, "tier=edge"]
extra_hosts: {historian.plant: 10.0.0.5, gateway: host-gateway}
restart: on-failure:3
stop_signal: SIGINT
stop_grace_period: 1m30.5s
logging: {driver: local, options: {max-size: 5m, max-file: 2}}
sysctls: [net.core.somaxconn=1024, kernel.shmmax=68719476736]
x-sealift: {requires: [/dev/nvidiactl]}
"""


def test_every_supported_field_keeps_its_compose_meaning_and_round_trips(tmp_path: Path) -> None:
    spec = loaded(tmp_path, FULL)
    (service,) = spec.app.services
    c = service.container
    assert (c.user, c.group_add, c.group_of) == ("1000:1000", ("video", "44"), ("/dev/dri/renderD128",))
    assert [(d.host, d.target, d.permissions) for d in c.devices] == [
        (("/dev/video0",), "/dev/video0", "r"), (("/dev/apex_0", "/dev/bus/usb"), None, "rwm"), (("/dev/hdmi",), "/dev/out", "rw"),
        (("/dev/vdec0",), None, "rwm")]
    assert c.cdi_devices == ("nvidia.com/gpu=all",) and c.runtime == "nvidia"
    assert c.device_requests == (DeviceRequest(capabilities=("gpu", "utility"), driver="nvidia", count=1),)
    assert (c.limits.cpus, c.limits.memory, c.limits.pids, c.limits.memory_reservation) == (1.5, 3 << 29, 100, 64 << 20)
    assert c.shm_size == 256 << 20 and c.ulimits == (("nofile", 1024, 4096), ("memlock", -1, -1))
    assert (c.cap_add, c.cap_drop) == (("NET_RAW", "IPC_LOCK"), ("ALL",))
    assert c.security_opt == ("no-new-privileges:true", "apparmor=edge-app")
    assert c.read_only and c.tmpfs == (("/tmp", "size=64m,mode=1777"),) and c.init is True
    assert c.entrypoint == ("/app/run", "--fast", "two words") and c.working_dir == "/app"
    assert c.labels == (("team", "vision"), ("tier", "edge"))
    assert c.extra_hosts == (("historian.plant", "10.0.0.5"), ("gateway", "host-gateway"))
    assert (c.restart, c.stop_signal, c.stop_grace_period) == ("on-failure:3", "SIGINT", 90.5)
    assert (c.logging.driver, c.logging.max_size, c.logging.max_file) == ("local", 5 << 20, 2)
    assert c.sysctls == (("net.core.somaxconn", "1024"), ("kernel.shmmax", "68719476736"))
    assert c.requires == ("/dev/nvidiactl",)
    again = parse_app(Field(Path("descriptor"), "app", spec.app.to_data()), images=("app",), mountable=(), secrets=(),
                      any_device_path=True)
    assert again == spec.app


@pytest.mark.parametrize("fields", [
    "entrypoint: []", "devices: ['/dev/video0::r']", "cpus: 1.2345678", "stop_grace_period: 0.1234567s",
    "stop_grace_period: 4m59.5s", "extra_hosts: [plc=10.0.0.1, plc=fd00::1]",
], ids=["empty-entrypoint", "device-permissions-only", "fine-cpus", "fine-grace", "long-grace", "name-twice"])
def test_what_the_descriptor_holds_parses_back_the_same(tmp_path: Path, fields: str) -> None:
    app = loaded(tmp_path, fields).app
    again = parse_app(Field(Path("descriptor"), "app", app.to_data()), images=("app",), mountable=(), secrets=(),
                      any_device_path=True)
    assert again == app and again.services[0].container != Container()


def test_defaults_rotate_logs_and_restart_with_the_engine(tmp_path: Path) -> None:
    (service,) = loaded(tmp_path, "").app.services
    c = service.container
    assert (c.logging.driver, c.logging.max_size, c.logging.max_file) == ("json-file", 10 << 20, 3)
    assert c.restart == "unless-stopped" and c == Container() and service.to_data().keys() == {"image", "ports"}


BAD = [
    ("device-outside-dev", "devices: [/etc/shadow]", "compose.yaml: services.app.devices[0]: expected a device path under /dev"),
    ("device-dotdot", "devices: [/dev/../etc/shadow]", "services.app.devices[0]: expected a device path under /dev"),
    ("one-of-outside-dev", "devices: [{one_of: [/dev/a, /tmp/b]}]", "services.app.devices[0].one_of[1]: expected a path under /dev"),
    ("capability", "cap_add: [SYS_ADMIN]", "services.app.cap_add[0]: capability SYS_ADMIN is outside the subset"),
    ("gpu-capability", "deploy: {resources: {reservations: {devices: [{capabilities: [tpu]}]}}}",
     "services.app.deploy.resources.reservations.devices[0].capabilities[0]: expected a device capability"),
    ("memory-unit", "mem_limit: 512q", "services.app.mem_limit: expected a size in bytes"),
    ("memory-twice", "{mem_limit: 1g, deploy: {resources: {limits: {memory: 1g}}}}",
     "services.app.mem_limit: is also set in deploy.resources"),
    ("cpus", "cpus: lots", "services.app.cpus: expected a number of CPUs"),
    ("restart-no", 'restart: "no"', 'services.app.restart: "no" is not allowed: a release must come back'),
    ("seccomp", "security_opt: [seccomp=unconfined]", "services.app.security_opt[0]: 'seccomp=unconfined' is not allowed"),
    ("apparmor-off", "security_opt: [apparmor=unconfined]", "services.app.security_opt[0]: 'apparmor=unconfined' is not allowed"),
    ("sysctl", "sysctls: {kernel.domainname: x}", "services.app.sysctls.kernel.domainname: sysctl kernel.domainname is outside"),
    ("net-sysctl-on-host", "{network_mode: host, sysctls: {net.core.somaxconn: 1}}",
     "services.app.sysctls.net.core.somaxconn: sysctl net.core.somaxconn would change the host's network"),
    ("ports-on-host", "network_mode: host", "services.app.ports: means nothing with network_mode host"),
    ("network-mode", "network_mode: container:db", "services.app.network_mode: expected \"host\" (a release's own"),
    ("log-driver", "logging: {driver: syslog}", "services.app.logging.driver: expected json-file, local or none"),
    ("log-size", "logging: {options: {max-size: big}}", "services.app.logging.options.max-size: expected a size in bytes"),
    ("tmpfs-option", "tmpfs: ['/tmp:exec,suid,size=1m,dev,foo']", "services.app.tmpfs[0]: expected tmpfs options"),
    ("label-reserved", "labels: {dev.sealift.slot: a}", "services.app.labels.dev.sealift.slot: label dev.sealift.slot is reserved"),
    ("extra-host", "extra_hosts: [plc:not-an-ip]", "services.app.extra_hosts[0]: expected HOST=ADDRESS with an IP address"),
    ("ulimit", "ulimits: {nofile: {soft: 10, hard: 5}}", "services.app.ulimits.nofile: expected soft no higher than hard"),
    ("count-and-ids", "deploy: {resources: {reservations: {devices: [{capabilities: [gpu], count: 1, device_ids: ['0']}]}}}",
     "reservations.devices[0].count: count and device_ids exclude each other"),
    ("disk", "devices: [/dev/sda]", "services.app.devices[0]: /dev/sda reaches the device's disks, memory or kernel log"),
    ("all-of-dev", "devices: [/dev/.]", "services.app.devices[0]: /dev/. reaches the device's disks"),
    ("memory-node", "devices: ['/dev/mem:/dev/mem']", "services.app.devices[0]: /dev/mem reaches the device's disks"),
    ("nvme", "devices: [{one_of: [/dev/video0, /dev/nvme0n1]}]", "devices[0].one_of[1]: /dev/nvme0n1 reaches the device's disks"),
    ("unplain-path", "devices: [/dev//video0]", "services.app.devices[0]: expected a device path under /dev"),
    ("leading-double-slash", "devices: ['//dev/mem']", "services.app.devices[0]: //dev/mem reaches the device's disks"),
    ("tmpfs-double-slash", "tmpfs: [//proc]", "services.app.tmpfs[0]: expected an absolute container path (not /, /proc"),
    ("sys-nice", "cap_add: [SYS_NICE]", "services.app.cap_add[0]: capability SYS_NICE is outside the subset"),
    ("unknown-cap-drop", "cap_drop: [FOO]", "services.app.cap_drop[0]: expected a Linux capability"),
    ("signal", "stop_signal: SIGFOO", "services.app.stop_signal: expected a signal such as SIGTERM"),
    ("tiny-memory", "mem_limit: 1k", "services.app.mem_limit: expected a memory size of at least 6m"),
    ("zero-bytes", "shm_size: 0.0001k", "services.app.shm_size: expected a size in bytes"),
    ("reserve-over-limit", "{mem_limit: 1g, mem_reservation: 2g}", "services.app.mem_reservation: reserves more memory than"),
    ("unlimited-soft", "ulimits: {nofile: {soft: -1, hard: 100}}", "services.app.ulimits.nofile: expected soft no higher"),
    ("tmpfs-proc", "tmpfs: [/proc]", "services.app.tmpfs[0]: expected an absolute container path (not /, /proc"),
    ("tmpfs-twice", "tmpfs: [/a, '/a:size=1m']", "services.app.tmpfs[1]: /a is given twice"),
    ("tmpfs-on-secret", "{secrets: [api-token], tmpfs: [/run/secrets/api-token]}",
     "services.app.tmpfs: /run/secrets/api-token is also where a volume or secret is mounted"),
    ("label-twice", "labels: [a=1, a=2]", "services.app.labels[1]: label a is given twice"),
    ("bridge", "network_mode: bridge", "services.app.network_mode: expected \"host\""),
    ("compress", "logging: {options: {compress: 'true'}}", "services.app.logging.options.compress: unknown field"),
    ("rtprio", "ulimits: {rtprio: 99}", "services.app.ulimits: 'rtprio' is not a valid ulimit"),
    ("nofile-unlimited", "ulimits: {nofile: -1}", "services.app.ulimits.nofile: expected open files from 1 to 1048576"),
    ("rt-signal", "stop_signal: SIGRTMIN+20", "services.app.stop_signal: expected a signal such as SIGTERM"),
    ("long-grace", "stop_grace_period: 10m", "services.app.stop_grace_period: expected a grace period of at most 300s"),
    ("tiny-reservation", "mem_reservation: 1m", "services.app.mem_reservation: expected a memory size of at least 6m"),
    ("scsi-generic", "devices: [/dev/sg0]", "services.app.devices[0]: /dev/sg0 reaches the device's disks"),
    ("flash", "devices: [{source: /dev/mtd0, target: /dev/flash}]", "services.app.devices[0]: /dev/mtd0 reaches the device's disks"),
    ("healthcheck-too-often", "healthcheck: {test: [NONE], interval: 500us}",
     "services.app.healthcheck.interval: expected 0, or a duration of at least 1ms"),
    ("replicas", "deploy: {replicas: 2}", "services.app.deploy.replicas: is not supported: a device runs one container per service"),
    ("pid", "pid: host", "services.app.pid: is not supported: sharing the host's process namespace"),
    ("models", "models: [llm]", "services.app.models: is not supported: a bundle's models are mounted with `volumes"),
    ("refused-field", "build: .", "services.app.build: is not supported: a bundle carries built images"),
    ("gpus", "gpus: all", "services.app.gpus: is not supported: ask in Compose's long form"),
    ("unknown-field", "colour: blue", "services.app.colour: unknown field (expected one of:"),
    ("accelerator-word", "x-sealift: {accelerator: maybe}", "services.app.x-sealift.accelerator: expected required or preferred"),
    ("user", "user: 'root; rm -rf /'", "services.app.user: expected a user name or number"),
]


@pytest.mark.parametrize(("fields", "message"), [(f, m) for _, f, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad_container_settings_are_one_line_naming_the_file_and_field(tmp_path: Path, fields: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        loaded(tmp_path, fields if not fields.startswith("{") else _block(fields))
    text = str(caught.value)
    assert message in text and "\n" not in text and str(tmp_path) in text


def _block(flow: str) -> str:
    """A flow mapping of several service fields, as block lines."""
    import yaml

    return yaml.safe_dump(yaml.safe_load(flow), default_flow_style=True, width=1000).strip()[1:-1].replace(", ", "\n") + "\n"


@pytest.mark.parametrize(("profile", "expect"), [
    ("x86_64-nvidia", lambda c: c.device_requests == (DeviceRequest(capabilities=("gpu",), driver="nvidia", count=-1),)
     and c.requires == ("/dev/nvidiactl",)),
    ("jetson-orin", lambda c: c.runtime == "nvidia" and not c.devices),
    ("rpi5-hailo8", lambda c: [d.host for d in c.devices] == [("/dev/hailo0",)] and c.group_of == ("/dev/hailo0",)),
    ("arm64-coral", lambda c: [d.host for d in c.devices] == [("/dev/apex_0", "/dev/bus/usb")]),
    ("x86_64-intel-npu", lambda c: [d.host for d in c.devices] == [("/dev/accel/accel0",)] and c.group_of == ("/dev/accel/accel0",)),
    ("x86_64-cpu", lambda c: c == Container()),
])
def test_one_compose_file_reaches_every_profiles_accelerator(tmp_path: Path, profile: str, expect: object) -> None:
    spec = loaded(tmp_path, "x-sealift: {accelerator: preferred}")
    (service,) = app_for_profile(spec, PROFILES[profile]).services
    assert service.container.accelerator is None and expect(service.container)  # type: ignore[operator]
    assert "x-sealift" not in service.to_data() or service.to_data()["x-sealift"] == {"requires": ["/dev/nvidiactl"]}


@pytest.mark.parametrize(("fields", "profile", "message"), [
    ("x-sealift: {accelerator: required}", "x86_64-cpu",
     "compose.yaml: services.app.x-sealift.accelerator: profile x86_64-cpu has no accelerator a container can reach"),
    ("deploy: {resources: {reservations: {devices: [{capabilities: [gpu]}]}}}", "rpi5-hailo8",
     "compose.yaml: services.app.deploy.resources.reservations.devices: profile rpi5-hailo8 has no accelerator that answers"),
    ("devices: [nvidia.com/gpu=all]", "x86_64-cpu", "services.app.devices: nvidia.com/gpu=all is a CDI device, and profile x86_64-cpu"),
    ("devices: [nvidia.com/gpu=all]", "rpi5-hailo8", "nvidia.com/gpu=all is a CDI device, and profile rpi5-hailo8 has no "
                                                   "accelerator of that vendor (hailo)"),
    ("runtime: runc\nx-sealift: {accelerator: required}", "jetson-orin",
     "services.app.runtime: runc differs from nvidia, which profile jetson-orin needs to reach its accelerator"),
    ("privileged: true", "x86_64-nvidia", "services.app.privileged: privileged containers reach every device on the host; set "
                                          "allow_privileged: true in sealift.yaml"),
])
def test_a_request_the_profile_cannot_answer_fails_the_build(tmp_path: Path, fields: str, profile: str, message: str) -> None:
    spec = loaded(tmp_path, fields)
    with pytest.raises(InputError) as caught:
        app_for_profile(spec, PROFILES[profile])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_runtime_of_the_services_own_stands_where_no_accelerator_is_asked_for(tmp_path: Path) -> None:
    (service,) = app_for_profile(loaded(tmp_path, "runtime: runsc"), PROFILES["jetson-orin"]).services
    assert service.container.runtime == "runsc" and not service.container.devices


def test_privileged_needs_the_spec_and_the_profile_to_allow_it(tmp_path: Path) -> None:
    spec = loaded(tmp_path, "privileged: true", extra="allow_privileged: true\n")
    with pytest.raises(InputError, match="profile x86_64-cpu does not allow privileged containers"):
        app_for_profile(spec, PROFILES["x86_64-cpu"])
    allowing = PROFILES["x86_64-cpu"].__class__(**{**vars(PROFILES["x86_64-cpu"]), "allow_privileged": True})
    assert app_for_profile(spec, allowing).services[0].container.privileged


def test_sealift_build_stops_before_writing_anything(tmp_path: Path) -> None:
    spec = spec_with(tmp_path / "src", "x-sealift: {accelerator: required}")
    done = subprocess.run([sys.executable, "-c", "from bundler.cli import main; main()", "build", str(spec), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == InputError.exit_code and "Traceback" not in done.stderr
    assert "x-sealift.accelerator: profile x86_64-cpu has no accelerator" in done.stderr
    assert not [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]


def test_inspect_shows_each_services_resolved_settings(tmp_path: Path) -> None:
    from bundler.build import BuildOptions, build_bundles, select_profiles

    spec = loaded(tmp_path / "src", "x-sealift: {accelerator: preferred}\nmem_limit: 512m\n")
    (built,) = build_bundles(spec, select_profiles(spec, PROFILES, ("x86_64-nvidia",)), BuildOptions(out=tmp_path / "out", epoch=0))
    run = [sys.executable, "-c", "from bundler.cli import main; main()", "inspect", str(built.path)]
    shown = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=120, check=True)
    service = result_of(shown.stdout)["services"]["app"]
    assert service["deploy"] == {"resources": {"limits": {"memory": 512 << 20},
                                               "reservations": {"devices": [{"capabilities": ["gpu"], "driver": "nvidia",
                                                                             "count": "all"}]}}}
    assert service["x-sealift"] == {"requires": ["/dev/nvidiactl"]} and "accelerator" not in service["x-sealift"]
    text = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "service app (image app)" in text and "device request all from nvidia with gpu" in text
    assert "requires       /dev/nvidiactl" in text and "logs           json-file, rotated at 10 MiB, 3 files" in text
