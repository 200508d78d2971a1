"""The application definition: a documented Compose subset (the health checks are :mod:`updater.healthpolicy`'s).

It is parsed from plain data, so the same code validates it in ``sealift.yaml`` at build time
and in a bundle's descriptor on the device. ``to_data()`` gives the normalised form that the
descriptor stores, which parses back to an equal value.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from updater.container import CONTAINER_FIELDS, Container, parse_container
from updater.devicenet import Provided, links_data, parse_links
from updater.names import ENV_NAME, NAME
from updater.routes import Route, parse_routes
from updater.yamlfile import Field, check_known, format_duration

__all__ = [
    "App",
    "ContainerHealthcheck",
    "Mount",
    "Port",
    "SecretMount",
    "Service",
    "parse_app",
    "parse_command",
    "start_order",
]

_PORT = re.compile(
    r"(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?"  # optional host address
    r"(?:(?P<host>\d{1,5}):)?(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp))?"
)


@dataclass(frozen=True, kw_only=True)
class Port:
    """A published port: ``[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]``."""

    container: int
    host: int | None = None
    host_ip: str | None = None
    protocol: str = "tcp"

    def to_data(self) -> str:
        text = str(self.container)
        if self.host is not None:
            text = f"{self.host}:{text}"
        if self.host_ip is not None:
            text = f"{self.host_ip}:{text}"
        return f"{text}/{self.protocol}"


@dataclass(frozen=True, kw_only=True)
class Mount:
    """A model or config of the bundle, mounted read-only at ``target`` in the container."""

    source: str
    target: str

    def to_data(self) -> str:
        return f"{self.source}:{self.target}:ro"


@dataclass(frozen=True, kw_only=True)
class SecretMount:
    """A secret a service declares, mounted read-only at ``/run/secrets/TARGET`` as a file owned by
    ``uid``:``gid`` with ``mode`` (Compose's long syntax; root and 0400 unless it says otherwise)."""

    source: str
    target: str
    uid: int = 0
    gid: int = 0
    mode: int = 0o400

    def to_data(self) -> str | dict[str, Any]:
        if (self.target, self.uid, self.gid, self.mode) == (self.source, 0, 0, 0o400):
            return self.source
        return {"source": self.source, "target": self.target, "uid": str(self.uid), "gid": str(self.gid), "mode": f"0{self.mode:o}"}


@dataclass(frozen=True, kw_only=True)
class ContainerHealthcheck:
    """Compose's ``healthcheck``: run by the engine inside the container."""

    test: tuple[str, ...]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0

    def to_data(self) -> dict[str, Any]:
        return {
            "test": list(self.test),
            "interval": format_duration(self.interval),
            "timeout": format_duration(self.timeout),
            "retries": self.retries,
            "start_period": format_duration(self.start_period),
        }


@dataclass(frozen=True, kw_only=True)
class Service:
    """One container of the application."""

    name: str
    image: str
    command: tuple[str, ...] | None = None
    environment: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    volumes: tuple[Mount, ...] = ()
    healthcheck: ContainerHealthcheck | None = None
    depends_on: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    secrets: tuple[SecretMount, ...] = ()
    container: Container = dataclasses.field(default_factory=Container)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"image": self.image}
        if self.command is not None:
            data["command"] = list(self.command)
        optional: dict[str, Any] = {
            "environment": dict(self.environment),
            "ports": [p.to_data() for p in self.ports],
            "volumes": [v.to_data() for v in self.volumes],
            "depends_on": list(self.depends_on),
            "networks": list(self.networks),
            "secrets": [m.to_data() for m in self.secrets],
        }
        data.update({key: value for key, value in optional.items() if value})
        if self.healthcheck is not None:
            data["healthcheck"] = self.healthcheck.to_data()
        return data | self.container.to_data()


@dataclass(frozen=True, kw_only=True)
class App:
    """The services of a release and the networks they share."""

    services: tuple[Service, ...]
    networks: tuple[tuple[str, bool], ...] = ()  # (name, internal)
    provides: tuple[Provided, ...] = ()  # on the device network (updater.devicenet)
    needs: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()  # through the device's ingress (updater.routes)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"services": {s.name: s.to_data() for s in self.services}}
        if self.networks:
            data["networks"] = {name: {"internal": internal} for name, internal in self.networks}
        links = links_data(self.provides, self.needs) | ({"routes": [r.to_data() for r in self.routes]} if self.routes else {})
        if links:
            data["x-sealift"] = links
        return data

    @property
    def on_device_network(self) -> bool:
        """Whether its services join the device network (it provides or needs something there)."""
        return bool(self.provides or self.needs)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)


# --- parsing -----------------------------------------------------------------------------------


def parse_app(field: Field, *, images: tuple[str, ...], mountable: tuple[str, ...], secrets: tuple[str, ...],
              any_device_path: bool = False) -> App:
    """Validate the Compose subset against the components the bundle declares. Device nodes must be
    under ``/dev`` unless ``any_device_path`` (a descriptor, which carries what a profile named)."""
    top = field.mapping(required=("services",), optional=("networks", "x-sealift"))
    networks = _parse_networks(top["networks"]) if "networks" in top else ()
    names = tuple(name for name, _ in networks)
    services = tuple(
        _parse_service(name, sub, images=images, mountable=mountable, secrets=secrets, networks=names,
                       any_device_path=any_device_path)
        for name, sub in top["services"].entries(key_pattern=NAME, key_what="service name")
    )
    if not services:
        top["services"].fail("at least one service")
    _check_depends_on(top["services"], services)
    extension = top["x-sealift"].mapping(optional=("provides", "needs", "routes")) if "x-sealift" in top else {}
    declared = tuple(s.name for s in services)
    provides, needs = parse_links(extension, declared)
    routes = parse_routes(extension["routes"], declared, secrets) if "routes" in extension else ()
    return App(services=services, networks=networks, provides=provides, needs=needs, routes=routes)


def _parse_networks(field: Field) -> tuple[tuple[str, bool], ...]:
    result = []
    for name, sub in field.entries(key_pattern=NAME, key_what="network name"):
        internal = False
        if sub.present:
            options = sub.mapping(optional=("internal",))
            internal = options["internal"].boolean() if "internal" in options else False
        result.append((name, internal))
    return tuple(result)


_SERVICE_FIELDS = (
    "command", "environment", "ports", "volumes", "healthcheck", "depends_on", "networks", "secrets", *CONTAINER_FIELDS,
)
# Compose service fields the subset leaves out on purpose, and why (docs/spec.md has the whole table)
_REFUSED = {
    "build": "a bundle carries built images; name one in sealift.yaml's `images`",
    "container_name": "the updater names containers sealift-APP-SLOT-SERVICE, so two releases can run side by side",
    "platform": "the hardware profile picks each image's platform",
    "env_file": "files reach a release as `configs`, secrets as `secrets`",
    "volumes_from": "only the release's models, configs and secrets are mounted",
    "links": "services reach each other by name on the release's networks",
    "external_links": "a release reaches nothing outside itself by container name",
    "pid": "sharing the host's process namespace exposes every process on the device",
    "ipc": "sharing the host's IPC namespace exposes other programs' shared memory",
    "userns_mode": "the engine's user namespace setting applies to every release alike",
    "cgroup_parent": "the engine places containers in its own cgroup",
    "device_cgroup_rules": "name the device nodes in `devices` instead",
    "scale": "one container per service",
    "profiles": "a release starts all its services",
    "gpus": "ask in Compose's long form (deploy.resources.reservations.devices) or with x-sealift: {accelerator: ...}",
    "configs": "a bundle's configs are mounted with `volumes: [CONFIG:/path]`",
    "models": "a bundle's models are mounted with `volumes: [MODEL:/path]`",
    "hostname": "a service's host name is its service name",
    "domainname": "a service's host name is its service name",
    "mac_address": "the engine gives addresses on the release's networks",
    "expose": "services on a release's networks reach each other's ports without it",
    "extends": "write each service in full: a bundle's descriptor holds what runs",
    "pull_policy": "images arrive in the bundle, never pulled",
    "tty": "a service runs unattended",
    "stdin_open": "a service runs unattended",
    "attach": "a service runs unattended",
    "develop": "a bundle is built, not developed on the device",
    "post_start": "a service's image starts what it needs",
    "pre_stop": "a service stops on its stop_signal, within its stop_grace_period",
    "annotations": "labels say what a container is",
    "label_file": "labels are written in the Compose file",
    "credential_spec": "a Windows setting",
    "isolation": "a Windows setting",
    "storage_opt": "the engine's storage settings apply to every release alike",
    "use_api_socket": "a release never reaches the engine that runs it",
    "provider": "every service runs a container from the bundle",
    "cgroup": "the engine places containers in their own cgroup namespaces",
    "uts": "sharing the host's UTS namespace lets a service rename the device",
    "mem_swappiness": "`mem_limit` says what a service may use; the kernel's memory handling stays as it is",
    "oom_score_adj": "the kernel's OOM handling stays as it is",
    "dns_opt": "the engine's resolver serves the release's networks",
    "dns_search": "the engine's resolver serves the release's networks",
    "blkio_config": "`cpus` and `mem_limit` say what a service may use",
    **{key: "`cpus` (or deploy.resources.limits.cpus) says what a service may use" for key in (
        "cpu_shares", "cpu_quota", "cpu_period", "cpuset", "cpu_count", "cpu_percent", "cpu_rt_runtime", "cpu_rt_period")},
    "memswap_limit": "`mem_limit` (or deploy.resources.limits.memory) says what a service may use",
    "oom_kill_disable": "a service over its memory limit must not hang the device",
    "dns": "the engine's resolver serves the release's networks",
}


def _parse_service(
    name: str,
    field: Field,
    *,
    images: tuple[str, ...],
    mountable: tuple[str, ...],
    secrets: tuple[str, ...],
    networks: tuple[str, ...],
    any_device_path: bool,
) -> Service:
    for key, why in _REFUSED.items():
        if isinstance(field.value, dict) and key in field.value:
            raise field.child(key).error(f"is not supported: {why}")
    f = field.mapping(required=("image",), optional=_SERVICE_FIELDS)
    container = parse_container(f, any_device_path=any_device_path)
    if container.host_network:
        for key in ("ports", "networks"):
            if key in f:
                raise f[key].error("means nothing with network_mode host: the service binds its ports on the host itself")
    service = Service(
        name=name,
        image=check_known(f["image"], images, what="image (an `images` entry)"),
        command=parse_command(f["command"]) if "command" in f else None,
        environment=_parse_environment(f["environment"]) if "environment" in f else (),
        ports=tuple(_parse_port(p) for p in f["ports"].items()) if "ports" in f else (),
        volumes=tuple(_parse_mount(v, mountable) for v in f["volumes"].items()) if "volumes" in f else (),
        healthcheck=_parse_healthcheck(f["healthcheck"]) if "healthcheck" in f else None,
        depends_on=_parse_depends_on(f["depends_on"]) if "depends_on" in f else (),
        networks=_names(f, "networks", networks, what="network (an `app.networks` entry)"),
        secrets=_parse_secrets(f["secrets"], secrets) if "secrets" in f else (),
        container=container,
    )
    mounted = {*(m.target for m in service.volumes), *(f"/run/secrets/{m.target}" for m in service.secrets)}
    for path, _ in container.tmpfs:
        if path in mounted:
            raise f["tmpfs"].error(f"{path} is also where a volume or secret is mounted")
    return service


def _parse_secrets(field: Field, declared: tuple[str, ...]) -> tuple[SecretMount, ...]:
    mounts = tuple(_parse_secret(item, declared) for item in field.items())
    for what, names in (("targets", [m.target for m in mounts]), ("sources", [m.source for m in mounts])):
        if len(set(names)) != len(names):
            field.fail(f"each secret once, with distinct {what}")
    return mounts


def _parse_secret(field: Field, declared: tuple[str, ...]) -> SecretMount:
    """``NAME``, or ``{source: NAME, target: FILE, uid: "1000", gid: "1000", mode: 0440}``."""
    if not isinstance(field.value, dict):
        source = check_known(field, declared, what="secret (a `secrets` entry)")
        return SecretMount(source=source, target=source)
    f = field.mapping(required=("source",), optional=("target", "uid", "gid", "mode"))
    source = check_known(f["source"], declared, what="secret (a `secrets` entry)")
    target = f["target"].string(pattern=NAME, what="a file name under /run/secrets") if "target" in f else source
    ids = {key: _id(f[key]) for key in ("uid", "gid") if key in f}
    mode = _mode(f["mode"]) if "mode" in f else 0o400
    return SecretMount(source=source, target=target, uid=ids.get("uid", 0), gid=ids.get("gid", 0), mode=mode)


def _id(field: Field) -> int:
    text = field.scalar_string()
    if not text.isdigit() or int(text) > 2**31 - 1:
        field.fail("a numeric user or group ID")
    return int(text)


def _mode(field: Field) -> int:
    """An octal mode of read bits only (a secret is never writable or executable): 0400, 0440, 0444."""
    value = field.value
    mode = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        mode = int(value, 8)
    if mode is None or mode & ~0o444 or not mode:
        field.fail("a mode of read bits only, such as 0400, 0440 or 0444")
    return mode


def _names(f: dict[str, Field], key: str, known: tuple[str, ...], *, what: str) -> tuple[str, ...]:
    if key not in f:
        return ()
    return tuple(check_known(item, known, what=what) for item in f[key].items())


def parse_command(field: Field) -> tuple[str, ...]:
    if isinstance(field.value, str):
        return ("/bin/sh", "-c", field.value)
    return tuple(item.scalar_string() for item in field.items())


def _parse_environment(field: Field) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    if isinstance(field.value, list):
        for item in field.items():
            text = item.string(what="KEY=VALUE")
            key, sep, value = text.partition("=")
            if not sep or not ENV_NAME.fullmatch(key):
                item.fail("KEY=VALUE")
            pairs.append((key, value))
    else:
        for key, sub in field.entries(key_pattern=ENV_NAME, key_what="environment variable name"):
            pairs.append((key, sub.scalar_string() if sub.present else ""))
    return tuple(sorted(pairs))


def _parse_port(field: Field) -> Port:
    text = field.scalar_string()
    m = _PORT.fullmatch(text)
    if m is None:
        field.fail('a port such as "8080", "8080:80" or "127.0.0.1:8080:80/tcp"')
    container = int(m["container"])
    host = int(m["host"]) if m["host"] else None
    if not 0 < container < 65536 or (host is not None and not 0 < host < 65536):
        field.fail("port numbers from 1 to 65535")
    if m["ip"] and host is None:
        field.fail("a host port after the host address")
    return Port(container=container, host=host, host_ip=m["ip"], protocol=m["proto"] or "tcp")


def _parse_mount(field: Field, mountable: tuple[str, ...]) -> Mount:
    text = field.string(what='"COMPONENT:/absolute/path[:ro]"')
    source, _, rest = text.partition(":")
    target, _, mode = rest.partition(":")
    if source not in mountable:
        known = ", ".join(sorted(mountable)) or "none declared"
        raise field.error(f"{source!r} is not a declared model or config (declared: {known})")
    if not target.startswith("/") or "/../" in f"{target}/" or "\x00" in target:
        field.fail("an absolute container path without '..'")
    if mode not in ("", "ro"):
        raise field.error(f"mode {mode!r} is not allowed: models and configs are always mounted read-only")
    return Mount(source=source, target=target)


def _parse_healthcheck(field: Field) -> ContainerHealthcheck:
    f = field.mapping(required=("test",), optional=("interval", "timeout", "retries", "start_period"))
    test_field = f["test"]
    if isinstance(test_field.value, str):
        test: tuple[str, ...] = ("CMD-SHELL", test_field.value)
    else:
        test = tuple(item.scalar_string() for item in test_field.items())
        if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            test_field.fail('a list starting with "CMD", "CMD-SHELL" or "NONE"')
    return ContainerHealthcheck(
        test=test,
        interval=_engine_duration(f["interval"]) if "interval" in f else 30.0,
        timeout=_engine_duration(f["timeout"]) if "timeout" in f else 30.0,
        retries=f["retries"].integer(low=1, high=100) if "retries" in f else 3,
        start_period=_engine_duration(f["start_period"]) if "start_period" in f else 0.0,
    )


def _engine_duration(field: Field) -> float:
    """A HEALTHCHECK duration: none, or at least a millisecond (the engine refuses less)."""
    seconds = field.duration()
    if 0 < seconds < 0.001:
        field.fail("0, or a duration of at least 1ms")
    return seconds


def _parse_depends_on(field: Field) -> tuple[str, ...]:
    if isinstance(field.value, dict):
        # the long form's conditions are accepted; the updater always waits for health
        return tuple(name for name, _ in field.entries(key_pattern=NAME, key_what="service name"))
    return field.string_list(pattern=NAME, what="a service name")


def _check_depends_on(field: Field, services: tuple[Service, ...]) -> None:
    names = {s.name for s in services}
    for service in services:
        for dep in service.depends_on:
            if dep not in names:
                raise field.child(service.name).child("depends_on").error(f"{dep!r} is not a service")
    order = _ordered(services)
    if order is None:
        raise field.error("depends_on forms a cycle")


def start_order(app: App) -> list[Service]:
    """The app's services, each after those it depends on (parsing refused cycles)."""
    order = _ordered(app.services)
    assert order is not None
    return [app.service(name) for name in order]


def _ordered(services: tuple[Service, ...]) -> list[str] | None:
    """Services in an order that starts dependencies first, or None if they form a cycle."""
    deps = {s.name: set(s.depends_on) for s in services}
    order: list[str] = []
    while deps:
        ready = sorted(name for name, wanted in deps.items() if wanted <= set(order))
        if not ready:
            return None
        order.extend(ready)
        for name in ready:
            del deps[name]
    return order
