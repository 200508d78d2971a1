"""The JSON Schemas in schemas/ against the validators they describe: every spec, Compose, site, rollout plan
and profile file in the repository passes both its schema and Sealift's own validator, and every bad
document in the table is refused by both, so the schemas and the validators cannot drift apart unnoticed."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator
from referencing import Registry, Resource

from bundler.devices import Inventory
from bundler.overlay import build_overlay
from bundler.rollout import read_plan_file
from bundler.spec import load_spec
from tests.builders import QUICK_SPEC, SPEC
from updater.errors import InputError
from updater.profiles import load_profile
from updater.yamlfile import load_yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"
EXAMPLE_SPEC = ROOT / "examples" / "vision-app" / "sealift.yaml"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SCHEMAS = {p.name.removesuffix(".schema.json"): json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.schema.json"))}
REGISTRY: Registry[Any] = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values())


def schema_errors(kind: str, path: Path) -> list[str]:
    """What ``kind``'s schema finds wrong in the YAML file at ``path``, read as Sealift reads it (YAML 1.1)."""
    validator = Draft202012Validator(SCHEMAS[kind], registry=REGISTRY)
    data = _as_text_times(load_yaml(path, what="document").value)
    return [f"{'.'.join(map(str, e.absolute_path)) or 'top level'}: {e.message[:200]}" for e in validator.iter_errors(data)]


def _as_text_times(value: Any) -> Any:
    """YAML 1.1 reads an unquoted 2026-12-07T06:00:00Z as a time; an editor (YAML 1.2) keeps it as text."""
    if isinstance(value, dict):
        return {k: _as_text_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text_times(v) for v in value]
    return value.isoformat() if isinstance(value, dt.date) else value


# --- Sealift's own validators, one per kind of file ------------------------------------------------

HOST_SPEC = """\
name: host
version: 1.0.0
profiles: all
images: {app: {source: oci:images/app}, vision: {source: oci:images/vision}}
models: {detector: {path: models/detector.bin}}
configs: {settings: {path: config/settings.yaml}, app-config: {path: config/app.conf}}
secrets: {api-token: {environment: API_TOKEN}, site-cert: {environment: SITE_CERT}, site-key: {environment: SITE_KEY}}
app: compose.yaml
"""


def _compose(path: Path, tmp: Path, inventory: Inventory) -> None:
    """A Compose file, named by a spec that declares the images, models, configs and secrets the tables use."""
    (tmp / "host").mkdir()
    shutil.copy(path, tmp / "host" / "compose.yaml")
    (tmp / "host" / "sealift.yaml").write_text(HOST_SPEC)
    load_spec(tmp / "host" / "sealift.yaml")


def _site(path: Path, tmp: Path, inventory: Inventory) -> None:
    """A site file, for the spec beside its sites/ directory (or the example's); with no devices to seal to,
    an overlay build that gets as far as its recipients has taken the site file."""
    beside = path.parent.parent / "sealift.yaml"
    spec = load_spec(beside if beside.is_file() else EXAMPLE_SPEC)
    try:
        build_overlay(spec, "demo-site", inventory=tmp / "no-devices.yaml", out=tmp / "out", site_file=path)
    except InputError as e:
        if "no enrolled device" in str(e):
            return
        raise
    raise AssertionError("an overlay was built with no enrolled device to seal to")


VALIDATORS: dict[str, Callable[[Path, Path, Inventory], object]] = {
    "sealift": lambda path, _tmp, _inventory: load_spec(path),
    "compose": _compose,
    "site": _site,
    "rollout-plan": lambda path, _tmp, inventory: read_plan_file(path, inventory, now=T0),
    "profile": lambda path, _tmp, _inventory: load_profile(path),
}


def refusal(kind: str, path: Path, tmp: Path, inventory: Inventory) -> str | None:
    """What Sealift's validator for ``kind`` says of the file at ``path``, or None when it accepts it."""
    try:
        VALIDATORS[kind](path, tmp, inventory)
    except InputError as e:
        return e.diagnostics()
    return None


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    """Three enrolled devices: one labelled ring=canary at plant-a, one at plant-2, one at plant-3."""
    from updater.identity import DeviceIdentity

    root = tmp_path_factory.mktemp("inventory")
    inv = Inventory(root / "devices.yaml")
    for name, site in (("d1", "plant-a"), ("d2", "plant-2"), ("d3", "plant-3")):
        (root / f"{name}.json").write_text(json.dumps(DeviceIdentity(root / name).enroll(site=site, profile="x86_64-cpu")))
        inv.add(root / f"{name}.json")
    inv.label(inv.devices()[0].device, add={"ring": "canary"})
    return inv


# --- the schemas themselves ------------------------------------------------------------------------


def _declared_properties(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """Every property a closed mapping declares (``additionalProperties: false``), and every schema for the
    values of an open one; the fragments of conditions (if, then, not) declare nothing."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            found += [(f"{where}.{k}", v) for k, v in node.get("properties", {}).items()]
        if isinstance(node.get("additionalProperties"), dict):
            found.append((f"{where}.*", node["additionalProperties"]))
        for key, value in node.items():
            if key not in ("if", "then", "else", "not"):
                found += _declared_properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _declared_properties(value, f"{where}[{i}]")
    return found


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_valid_identified_titled_and_describes_every_property(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://sealift.dev/schemas/{name}.schema.json"
    assert schema["title"] and schema["description"]
    undescribed = [where for where, sub in _declared_properties(schema) if not sub.get("description")]
    assert undescribed == []
    assert len((SCHEMA_DIR / f"{name}.schema.json").read_text().splitlines()) < 500


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_also_a_valid_draft_7_schema_as_yaml_editors_check_it(name: str) -> None:
    """The YAML language server (VS Code's YAML extension) checks a schema against draft 7's meta-schema."""
    as_draft_7 = {k: v for k, v in SCHEMAS[name].items() if k != "$schema"}
    assert [e.message for e in Draft7Validator(Draft7Validator.META_SCHEMA).iter_errors(as_draft_7)] == []


def test_every_reference_resolves_within_the_published_schemas() -> None:
    refs = [(schema["$id"], ref) for name, schema in SCHEMAS.items()
            for ref in re.findall(r'"\$ref": "([^"]+)"', (SCHEMA_DIR / f"{name}.schema.json").read_text())]
    assert len(refs) > 50
    for base, ref in refs:
        assert REGISTRY.resolver(base).lookup(ref).contents is not None, (base, ref)


# --- every file in the repository passes both ------------------------------------------------------


def _repository_files() -> list[tuple[str, Path]]:
    return [
        *(("sealift", p) for p in sorted(ROOT.glob("examples/*/sealift*.yaml"))),
        *(("compose", p) for p in sorted(ROOT.glob("examples/*/compose*.yaml"))),
        *(("site", p) for p in sorted(ROOT.glob("examples/*/sites/*.yaml"))),
        *(("profile", p) for p in sorted((ROOT / "profiles").glob("*.yaml"))),
    ]


def test_the_repository_has_files_of_every_kind_but_plans() -> None:
    assert {kind for kind, _ in _repository_files()} == {"sealift", "compose", "site", "profile"}


@pytest.mark.parametrize(("kind", "path"), _repository_files(), ids=[str(p.relative_to(ROOT)) for _, p in _repository_files()])
def test_every_file_in_the_repository_passes_its_schema_and_sealift(kind: str, path: Path, tmp_path: Path,
                                                                   inventory: Inventory) -> None:
    assert schema_errors(kind, path) == []
    assert refusal(kind, path, tmp_path, inventory) is None


def doc_block(doc: str, first_line: str) -> str:
    """The YAML block of ``docs/DOC`` that starts with ``first_line`` (a comment naming the file)."""
    text = (ROOT / "docs" / doc).read_text()
    start = text.index(f"```yaml\n{first_line}\n") + len("```yaml\n")
    return text[start:text.index("```", start)]


FEATURES_SPEC = """\
name: features
version: 2.0.0-rc.1+build.5
profiles: [x86_64-cpu, jetson-orin]
images:
  app: {source: "docker://registry.example.com/app:2.0.0", variants: {jetson-orin: {source: oci:images/app-l4t}}}
models:
  detector: {path: models/detector.onnx, provenance: {identity: ci@example.com, issuer: "https://token.actions.githubusercontent.com"}}
  engine: {variants: {jetson-orin: {path: models/engine.plan}}}
configs: {golden-in: {path: golden/in.txt}, golden-out: {path: golden/out.json}}
sigstore: {trusted_root: sigstore/trusted_root.json}
secrets: {api-token: {file: secrets/token}}
allow_privileged: false
app: {services: {app: {image: app, secrets: [api-token], volumes: ["detector:/models/detector.onnx"]}}}
health:
  deadline: 90
  stabilisation: 0s
  checks:
    - {name: own, type: container, service: app, deadline: 2m}
    - {name: up, type: tcp, service: app, port: 8080}
    - {name: self-test, type: exec, service: app, command: /app/selftest}
    - {name: healthz, type: http, service: app, port: 8080, path: /healthz, expect_status: 204, secret: api-token}
    - {name: golden, type: inference, service: app, port: 8080, path: /infer, input: golden-in, expected: golden-out,
       tolerance: 0, max_latency: 1.5, secret: api-token}
"""
# optional keys written with no value are taken as absent
NULLS_SPEC = "name: x\nversion: 1.0.0\nprofiles: all\nimages: {app: {source: oci:i}}\nmodels:\nhealth:\nsigstore:\n" \
             "app: {services: {app: {image: app, ports: null, x-sealift: {accelerator: null}}}}\n"
FEATURES_COMPOSE = """\
services:
  app:
    image: app
    command: /app/run --port 8080
    entrypoint: ["/bin/tini", "--"]
    environment: [MODEL=/models/detector, "DEBUG="]
    ports: ["127.0.0.1:8080:8080/tcp", 9000, "[::1]:9443:443", "05353:53/udp"]
    volumes: ["detector:/models/detector:ro", "settings:/etc/app/settings.yaml:"]
    secrets: [api-token, {source: site-key, target: key, uid: "1000", gid: 1000, mode: 0440}]
    healthcheck: {test: "wget -q -O- http://127.0.0.1:8080/healthz", interval: 5s, timeout: 500ms, retries: 3, start_period: 0}
    depends_on: {broker: {condition: service_healthy}}
    networks: [front]
    user: "1000:video"
    group_add: [video, 44, {group_of: /dev/dri/renderD128}]
    devices: [/dev/dri/renderD128, "/dev/hailo0:/dev/hailo0:rw", {source: /dev/video0, permissions: r},
              {one_of: [/dev/apex_0, /dev/bus/usb]}, nvidia.com/gpu=all]
    runtime: nvidia
    deploy:
      resources:
        limits: {cpus: "1.5", memory: 512m, pids: 200}
        reservations: {memory: 128m, devices: [{capabilities: [gpu], driver: nvidia, count: all}]}
    shm_size: 64m
    ulimits: {nofile: {soft: 1024, hard: 4096}, core: 0, memlock: -1}
    cap_add: [net_bind_service, CAP_IPC_LOCK]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true", apparmor=sealift-app]
    read_only: true
    tmpfs: ["/tmp:size=64m,mode=1777", /var/cache/app]
    init: true
    working_dir: /app
    labels: [com.example.team=vision]
    extra_hosts: ["historian:10.0.0.5", "gateway=host-gateway", "v6=[fd00::1]"]
    restart: on-failure:5
    stop_signal: SIGRTMIN+3
    stop_grace_period: 1m30s
    logging: {driver: local, options: {max-size: 10m, max-file: "5"}}
    sysctls: {net.core.somaxconn: 1024, kernel.shmmax: "68719476736"}
    x-sealift: {accelerator: preferred, requires: [/dev/nvidia-uvm]}
  broker:
    image: app
    network_mode: host
    sysctls: [kernel.msgmax=65536]
    stop_signal: 15
    logging: {driver: none}
    mem_limit: 64m
    extra_hosts: {historian: 10.0.0.5}
    labels: {com.example.role: broker}
networks:
  front: {internal: true}
  back:
x-sealift:
  provides: {mqtt: {service: broker, port: 1883}}
  needs: historian-api
  routes:
    - {host: vision.plant.example, path: /api, service: app, port: 8080, tls: {certificate: site-cert, key: site-key}}
    - {path: /, service: app, port: 8080}
"""
PLAN = """\
app: vision-app
version: 1.3.0
failure_threshold: "12.5%"
waves:
  - {name: canary, labels: {ring: canary}}
  - {name: plant, sites: [plant-2], not_before: 2026-12-07T06:00:00Z}
  - {name: half, percent: "50 %", not_before: "2026-12-08T06:00:00+01:00"}
  - {name: rest, percent: 100}
"""
GOOD = [
    ("sealift", "tests/builders.py SPEC", SPEC),
    ("sealift", "tests/builders.py QUICK_SPEC", QUICK_SPEC),
    ("sealift", "every-feature", FEATURES_SPEC),
    ("sealift", "optional-keys-with-no-value", NULLS_SPEC),
    ("compose", "every-feature", FEATURES_COMPOSE),
    ("site", "docs/secrets.md", doc_block("secrets.md", "# sites/plant-7.yaml, beside the spec")),
    ("rollout-plan", "docs/rollout.md", doc_block("rollout.md", "# vision-app-1.3.0.yaml")),
    ("rollout-plan", "every-selector", PLAN),
]


@pytest.mark.parametrize(("kind", "text"), [(k, t) for k, _, t in GOOD], ids=[f"{g[0]}:{g[1]}" for g in GOOD])
def test_documents_using_every_feature_pass_their_schema_and_sealift(kind: str, text: str, tmp_path: Path,
                                                                     inventory: Inventory) -> None:
    path = tmp_path / "doc" / ("x86_64-cpu.yaml" if kind == "profile" else "document.yaml")
    path.parent.mkdir()
    path.write_text(text)
    assert schema_errors(kind, path) == []
    assert refusal(kind, path, tmp_path, inventory) is None


# --- every bad document is refused by both ---------------------------------------------------------

COMPOSE = """\
services:
  app:
    image: app
    ports: ["8080:8080"]
    volumes: ["detector:/models/detector:ro"]
    deploy: {resources: {limits: {memory: 256m}}}
    logging: {driver: json-file}
"""
SITE = (ROOT / "examples" / "vision-app" / "sites" / "demo-site.yaml").read_text()
PROFILE = (ROOT / "profiles" / "arm64-coral.yaml").read_text()
SIGNED_SPEC = SPEC.replace("    path: models/int8.bin\n", "    path: models/int8.bin\n    provenance: {identity: a@b.c, issuer: ISSUER}\n")


def service(line: str) -> str:
    """COMPOSE with ``line`` added to its service."""
    return COMPOSE + f"    {line}\n"


def wave(text: str) -> str:
    """PLAN with one more wave."""
    return PLAN + f"  - {text}\n"


BAD = [
    # sealift.yaml
    ("sealift", "missing-name", SPEC.replace("name: demo\n", ""), "name: is required"),
    ("sealift", "unknown-key", SPEC + "colour: blue\n", "colour: unknown field"),
    ("sealift", "bad-name", SPEC.replace("name: demo", "name: Demo_App"), "name: expected a name"),
    ("sealift", "bad-version", SPEC.replace("version: 1.2.0", "version: 1.2"), "version: expected a semantic version"),
    ("sealift", "profiles-a-string", SPEC.replace("profiles: [x86_64-cpu, x86_64-nvidia, jetson-orin]", "profiles: x86_64-cpu"),
     "expected a list of profile names"),
    ("sealift", "profiles-empty", SPEC.replace("[x86_64-cpu, x86_64-nvidia, jetson-orin]", "[]"), "at least one profile"),
    ("sealift", "profile-twice", SPEC.replace("jetson-orin]", "x86_64-cpu]"), "names a profile twice"),
    ("sealift", "image-without-source", SPEC.replace("    source: oci:images/app:1.0.0\n", "    variants: {}\n"), "needs `source`"),
    ("sealift", "image-provenance", SPEC.replace("    source: oci:images/app:1.0.0\n", "    source: oci:i\n    provenance: {}\n"),
     "images.app.provenance: unknown field"),
    ("sealift", "provenance-without-sigstore", SIGNED_SPEC.replace("ISSUER", "https://i"), "sigstore: is required"),
    ("sealift", "issuer-not-https", SIGNED_SPEC.replace("ISSUER", "http://i") + "sigstore: {trusted_root: r.json}\n",
     "expected the OIDC issuer URL"),
    ("sealift", "secret-value", SPEC.replace("{environment: DEMO_API_TOKEN}", "{value: hunter2}"), "secret values never go in the spec"),
    ("sealift", "secret-two-sources", SPEC.replace("{environment: DEMO_API_TOKEN}", "{environment: A, file: b}"), "exactly one of"),
    ("sealift", "secret-no-source", SPEC.replace("{environment: DEMO_API_TOKEN}", "{environment: null}"), "exactly one of"),
    ("sealift", "secret-bad-variable", SPEC.replace("DEMO_API_TOKEN", "DEMO-TOKEN"), "expected an environment variable name"),
    ("sealift", "privileged-as-text", SPEC + "allow_privileged: 'yes'\n", "allow_privileged: expected true or false"),
    ("sealift", "bad-duration", SPEC.replace("deadline: 60s", "deadline: soon"), "health.deadline: expected a duration"),
    ("sealift", "negative-duration", SPEC.replace("deadline: 60s", "deadline: -5"), "health.deadline: expected a duration"),
    ("sealift", "check-unknown-type", SPEC.replace("type: http", "type: ping"), "checks[0].type: expected one of"),
    ("sealift", "check-without-port", SPEC.replace("type: http, service: app, port: 8080,", "type: http, service: app,"),
     "checks[0].port: is required for a http check"),
    ("sealift", "check-foreign-field", SPEC.replace("path: /healthz}", "path: /healthz, command: [ls]}"), "does not apply to a http check"),
    ("sealift", "check-status-out-of-range", SPEC.replace("path: /healthz}", "path: /healthz, expect_status: 700}"),
     "expect_status: expected an integer from 100 to 599"),
    ("sealift", "app-a-number", "name: x\nversion: 1.0.0\nprofiles: all\nimages: {app: {source: oci:i}}\napp: 3\n",
     "app: expected a mapping"),
    # the Compose subset (inline in sealift.yaml or a file it names)
    ("compose", "no-services", "services: {}\n", "at least one service"),
    ("compose", "unknown-top-level-key", COMPOSE + "volumes: {data: {}}\n", "volumes: unknown field"),
    ("compose", "refused-field", service("gpus: all"), "gpus: is not supported"),
    ("compose", "build", service("build: ."), "build: is not supported"),
    ("compose", "bad-service-name", COMPOSE.replace("  app:", "  App:"), "is not a valid service name"),
    ("compose", "port-out-of-range", COMPOSE.replace('"8080:8080"', '"80800:8080"'), "ports[0]: expected"),
    ("compose", "address-without-host-port", COMPOSE.replace('"8080:8080"', '"127.0.0.1:8080"'), "a host port after the host address"),
    ("compose", "volume-read-write", COMPOSE.replace(":ro", ":rw"), "always mounted read-only"),
    ("compose", "volume-dotdot", COMPOSE.replace("/models/detector:ro", "/models/../etc:ro"), "without '..'"),
    ("compose", "environment-item", service('environment: ["NOEQUALS"]'), "expected KEY=VALUE"),
    ("compose", "environment-name", service("environment: {1BAD: x}"), "is not a valid environment variable name"),
    ("compose", "healthcheck-test", service("healthcheck: {test: [RUN, ls]}"), 'a list starting with "CMD"'),
    ("compose", "healthcheck-retries", service("healthcheck: {test: [CMD, ls], retries: 0}"), "an integer from 1 to 100"),
    ("compose", "healthcheck-interval", service("healthcheck: {test: [CMD, ls], interval: 0.0001}"), "at least 1ms"),
    ("compose", "secret-mode", service("secrets: [{source: api-token, mode: '0640'}]"), "a mode of read bits only"),
    ("compose", "secret-uid", service("secrets: [{source: api-token, uid: alice}]"), "a numeric user or group ID"),
    ("compose", "user", service('user: "root:root:x"'), "a user name or number"),
    ("compose", "group", service("group_add: [Video]"), "a group name or number"),
    ("compose", "device-outside-dev", service("devices: [/tmp/x]"), "a device path under /dev"),
    ("compose", "device-disk", service("devices: [/dev/sda]"), "reaches the device's disks"),
    ("compose", "device-not-plain", service("devices: [/dev/dri//card0]"), "a device path under /dev"),
    ("compose", "device-permissions", service('devices: ["/dev/video0:/dev/video0:rx"]'), "cgroup permissions"),
    ("compose", "device-one-of-one", service("devices: [{one_of: [/dev/apex_0]}]"), "two or more device paths"),
    ("compose", "deploy-replicas", service("deploy: {replicas: 2}").replace("    deploy: {resources: {limits: {memory: 256m}}}\n", ""),
     "replicas: is not supported"),
    ("compose", "device-request-count-and-ids", COMPOSE.replace("limits: {memory: 256m}", "reservations: {devices: [{capabilities: "
                                                                "gpu, count: 1, device_ids: ['0']}]}"), "exclude each other"),
    ("compose", "device-request-options", COMPOSE.replace("limits: {memory: 256m}", "reservations: {devices: [{capabilities: gpu, "
                                                          "options: {a: b}}]}"), "driver options are not supported"),
    ("compose", "memory-below-6m", COMPOSE.replace("memory: 256m", "memory: 1048576"), "at least 6m"),
    ("compose", "memory-twice", service("mem_limit: 128m"), "is also set in deploy.resources"),
    ("compose", "cpus", service("cpus: 2000"), "a number of CPUs"),
    ("compose", "ulimit-nice", service("ulimits: {nice: 10}"), "is not a valid ulimit"),
    ("compose", "ulimit-nofile", service("ulimits: {nofile: 2000000}"), "open files from 1 to 1048576"),
    ("compose", "cap-add-sys-admin", service("cap_add: [SYS_ADMIN]"), "capability SYS_ADMIN is outside the subset"),
    ("compose", "cap-drop-unknown", service("cap_drop: [FLY]"), "a Linux capability"),
    ("compose", "seccomp-unconfined", service("security_opt: [seccomp=unconfined]"), "is not allowed"),
    ("compose", "tmpfs-proc", service("tmpfs: [/proc]"), "not /, /proc, /sys or /dev"),
    ("compose", "tmpfs-option", service('tmpfs: ["/tmp:exec"]'), "tmpfs options among"),
    ("compose", "working-dir", service("working_dir: app"), "an absolute path"),
    ("compose", "reserved-label", service("labels: {dev.sealift.slot: a}"), "is reserved"),
    ("compose", "extra-host-address", service('extra_hosts: ["db=10.0.0.300"]'), "with an IP address"),
    ("compose", "restart-no", service('restart: "no"'), '"no" is not allowed'),
    ("compose", "stop-signal", service("stop_signal: SIGFOO"), "a signal such as SIGTERM"),
    ("compose", "grace-period", service("stop_grace_period: 600"), "a grace period of at most 300s"),
    ("compose", "log-driver", COMPOSE.replace("driver: json-file", "driver: syslog"), "json-file, local or none"),
    ("compose", "log-none-with-options", COMPOSE.replace("driver: json-file", "driver: none, options: {max-file: '2'}"),
     'mean nothing with driver "none"'),
    ("compose", "log-max-file", COMPOSE.replace("driver: json-file", "options: {max-file: '0'}"), "an integer from 1 to 100"),
    ("compose", "network-mode-bridge", service("network_mode: bridge"), 'expected "host"'),
    ("compose", "ports-with-host-network", service("network_mode: host"), "means nothing with network_mode host"),
    ("compose", "net-sysctl-with-host-network", COMPOSE.replace('    ports: ["8080:8080"]\n', "    network_mode: host\n")
     + "    sysctls: {net.core.somaxconn: 1024}\n", "would change the host's network"),
    ("compose", "unsafe-sysctl", service("sysctls: [kernel.panic=1]"), "outside the subset Sealift allows"),
    ("compose", "accelerator", service("x-sealift: {accelerator: always}"), "required or preferred"),
    ("compose", "requires-host-node", service("x-sealift: {requires: [/dev/mem]}"), "reaches the device's disks"),
    ("compose", "requires-double-slash", service("x-sealift: {requires: [//dev/mem]}"), "written plainly"),
    ("compose", "network-option", COMPOSE + "networks: {front: {driver: overlay}}\n", "driver: unknown field"),
    ("compose", "route-without-port", COMPOSE + "x-sealift: {routes: [{service: app}]}\n", "port: is required"),
    ("compose", "route-tls-without-host",
     COMPOSE + "x-sealift: {routes: [{service: app, port: 8080, tls: {certificate: site-cert, key: site-key}}]}\n",
     "needs the route's host"),
    ("compose", "route-upper-case-host", COMPOSE + "x-sealift: {routes: [{host: Vision.example, service: app, port: 8080}]}\n",
     "a host name in lower case"),
    ("compose", "provides-without-port", COMPOSE + "x-sealift: {provides: {mqtt: {service: app}}}\n", "port: is required"),
    # site files
    ("site", "missing-version", SITE.replace("version: 1.0.0\n", ""), "version: is required"),
    ("site", "version-not-semantic", SITE.replace("version: 1.0.0", "version: 3"), "is not a semantic version"),
    ("site", "unknown-key", SITE + "secrets: {api-token: hunter2}\n", "secrets: unknown field"),
    ("site", "fits-not-a-range", SITE.replace('">=1.0.0 <2.0.0"', "soon"), "is not a version range"),
    ("site", "environment-a-list", SITE.replace("{VISION_SITE: demo-site}", "[VISION_SITE=demo-site]"), "expected a mapping"),
    ("site", "environment-bad-name", SITE.replace("VISION_SITE:", "VISION-SITE:"), "is not a valid environment variable"),
    ("site", "environment-no-value", SITE.replace("{VISION_SITE: demo-site}", "{VISION_SITE: }"), "expected a string or number"),
    ("site", "value-too-long", SITE.replace("demo-site}", "x" * 5000 + "}"), "longer than 4096 characters"),
    # rollout plans
    ("rollout-plan", "missing-waves", PLAN.split("waves:")[0], "waves: is required"),
    ("rollout-plan", "no-waves", PLAN.split("waves:")[0] + "waves: []\n", "expected 1 to 64 waves"),
    ("rollout-plan", "too-many-waves", PLAN.split("waves:")[0] + "waves:\n" + "".join(f"  - {{name: w{i}, percent: {i + 1}}}\n"
                                                                                       for i in range(65)), "expected 1 to 64 waves"),
    ("rollout-plan", "unknown-key", PLAN + "rollback: true\n", "rollback: unknown field"),
    ("rollout-plan", "bad-version", PLAN.replace("version: 1.3.0", "version: latest"), "expected a semantic version"),
    ("rollout-plan", "wave-unknown-key", wave("{name: late, percent: 100, after: rest}"), "after: unknown field"),
    ("rollout-plan", "empty-wave", wave("{name: nobody}"), "wave nobody is empty"),
    ("rollout-plan", "percent-over-100", PLAN.replace("percent: 100", "percent: 101"), "a percentage from 0 to 100"),
    ("rollout-plan", "percent-zero", PLAN.replace('percent: "50 %"', "percent: 0"), "is not a share of devices"),
    ("rollout-plan", "threshold-text", PLAN.replace('"12.5%"', "half"), "expected a percentage"),
    ("rollout-plan", "device-id", wave("{name: one, devices: [DEV-1]}"), "expected a device ID"),
    ("rollout-plan", "time-without-zone", PLAN.replace("2026-12-07T06:00:00Z", "2026-12-07T06:00:00"), "a time with its zone"),
    ("rollout-plan", "label-key", PLAN.replace("{ring: canary}", "{Ring: canary}"), "is not a valid label"),
    # hardware profiles
    ("profile", "unknown-key", PROFILE + "gpu: true\n", "gpu: unknown field"),
    ("profile", "reserved-name", PROFILE.replace("name: arm64-coral", "name: rollout"), "is reserved"),
    ("profile", "architecture", PROFILE.replace("architecture: arm64", "architecture: aarch64"), "one of amd64"),
    ("profile", "os", PROFILE.replace("os: linux", "os: windows"), 'expected "linux"'),
    ("profile", "compatible-with-space", PROFILE.replace("sealift/arm64-coral", "'sealift arm64 coral'"), "printable text"),
    ("profile", "priority", PROFILE.replace("priority: 50", "priority: 5000"), "an integer from 0 to 1000"),
    ("profile", "rule-two-kinds", PROFILE.replace("- cpu_arch: aarch64", "- {cpu_arch: aarch64, file: /dev/apex_0}"), "one rule of"),
    ("profile", "rule-pci", PROFILE.replace('"1ac1:089a"', '"1ac1:89a"'), "VENDOR:DEVICE in hex"),
    ("profile", "rule-relative-file", PROFILE.replace("file: /dev/apex_0", "file: dev/apex_0"), "an absolute path"),
    ("profile", "empty-accelerator", PROFILE.replace("    devices:\n      - one_of: [/dev/apex_0, /dev/bus/usb]\n", "    devices: []\n"),
     "at least one of runtime, devices"),
    ("profile", "accelerator-host-node", PROFILE.replace("/dev/bus/usb]", "/dev/mem]"), "reaches the device's disks"),
    ("profile", "accelerator-double-slash", PROFILE.replace("/dev/bus/usb]", "//dev/mem]"), "written plainly"),
    ("profile", "accelerator-unknown-key", PROFILE.replace("  accelerator:\n", "  accelerator:\n    gpus: all\n"), "gpus: unknown field"),
]


@pytest.mark.parametrize(("kind", "text", "message"), [(k, t, m) for k, _, t, m in BAD], ids=[f"{b[0]}:{b[1]}" for b in BAD])
def test_a_bad_document_is_refused_by_its_schema_and_by_sealift(kind: str, text: str, message: str, tmp_path: Path,
                                                                inventory: Inventory) -> None:
    path = tmp_path / "doc" / ("arm64-coral.yaml" if kind == "profile" else "document.yaml")
    path.parent.mkdir()
    path.write_text(text)
    assert schema_errors(kind, path) != []
    said = refusal(kind, path, tmp_path, inventory)
    assert said is not None and message in said
