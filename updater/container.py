"""How a service's container runs: the Compose fields beyond image, command, ports and mounts.

Users and groups, device nodes and accelerator requests, the container runtime, resource limits,
logging with rotation, capabilities and the other settings production edge services declare,
parsed from Compose's own words (docs/spec.md has the table of every Compose service field). The
same parser reads ``sealift.yaml``'s Compose file at build time, a profile's ``container`` section
and a bundle's descriptor on the device, so what the builder checked is what the device runs.

Two additions to Compose's words, both resolved by a profile at build time: a service's
``x-sealift: {accelerator: required|preferred}`` asks for whatever the profile says reaches its
accelerator, and a device entry or group may name alternatives (``one_of``: the first device
present on the device) or the group that owns a device node (``group_of``), because a Coral may sit
on USB or PCIe and an NPU's ``render`` group has a different number on every host.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from updater.yamlfile import Field, format_duration

__all__ = [
    "ACCELERATOR_WANTS",
    "CONTAINER_FIELDS",
    "DEFAULT_LOGGING",
    "Access",
    "Container",
    "Device",
    "DeviceRequest",
    "Limits",
    "Logging",
    "parse_access",
    "parse_container",
]

# the Compose service fields this module reads (appdef reads the others)
CONTAINER_FIELDS = (
    "user", "group_add", "devices", "runtime", "deploy", "mem_limit", "mem_reservation", "cpus", "pids_limit",
    "shm_size", "ulimits", "cap_add", "cap_drop", "security_opt", "read_only", "tmpfs", "init", "entrypoint",
    "working_dir", "labels", "extra_hosts", "restart", "stop_signal", "stop_grace_period", "logging", "network_mode",
    "sysctls", "privileged", "x-sealift",
)
ACCELERATOR_WANTS = ("required", "preferred")

_ACCOUNT = r"(?:[a-z_][a-z0-9_-]{0,31}|\d{1,10})"
_USER = re.compile(rf"{_ACCOUNT}(?::{_ACCOUNT})?")
_GROUP = re.compile(_ACCOUNT)
_RUNTIME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ABSOLUTE = re.compile(r"/[A-Za-z0-9._/@+-]{0,255}")
_DEV = re.compile(r"/dev/[A-Za-z0-9._/@+-]{1,250}")
_CDI = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}=[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
_PERMISSIONS = re.compile(r"(?=.)r?w?m?")
_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIGNAL = re.compile(r"SIGRTMIN\+(?:[1-9]|1[0-5])|SIGRTMAX-(?:[1-9]|1[0-4])|SIG[A-Z0-9]{2,10}|[1-9]\d?")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_CAPABILITY = re.compile(r"(?:CAP_)?([A-Z_]{2,32})")

# Docker's default capabilities, plus locking memory (inference runtimes pin DMA buffers), which
# the memory limit still bounds. Not SYS_NICE: real-time threads escape the CPU limit and can
# starve the device, the updater included.
SAFE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "NET_RAW",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT", "IPC_LOCK",
})
# every capability Linux has, for cap_drop (an unknown name is refused by the engine)
_CAPABILITIES = SAFE_CAPABILITIES | {
    "AUDIT_CONTROL", "AUDIT_READ", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH", "IPC_OWNER", "LEASE",
    "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "NET_ADMIN", "NET_BROADCAST", "PERFMON", "SYSLOG", "SYS_ADMIN",
    "SYS_BOOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "WAKE_ALARM", "ALL",
}
# device nodes (by name) that reach the device's disks, flash, memory or kernel log: refused unless
# privileged; the device also looks at what each node really is before the switch (updater.needs)
_HOST_NODES = re.compile(
    r"/dev(?:/(?:mem|kmem|port|kmsg|mapper|disk|block|char|cpu|root|cdrom|snapshot|bsg|zvol|sd[a-z]{1,2}\d*|(?:hd|vd|xvd)[a-z]\d*"
    r"|nvme\d.*|mmcblk\d.*|loop.*|dm-\d+|md\d*|sr\d+|sg\d+|nbd\d+|zram\d+|ram\d+|mtd.*|ubi.*|pmem.*|dax.*|zd\d+.*|rbd.*)"
    r"(?:/.*)?)?"
)
_SIGNALS = frozenset({
    "SIGABRT", "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCONT", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGIO", "SIGKILL",
    "SIGPIPE", "SIGPROF", "SIGPWR", "SIGQUIT", "SIGSEGV", "SIGSTKFLT", "SIGSTOP", "SIGSYS", "SIGTERM", "SIGTRAP",
    "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGUSR1", "SIGUSR2", "SIGVTALRM", "SIGWINCH", "SIGXCPU", "SIGXFSZ",
    "SIGRTMIN", "SIGRTMAX",
})
_MIN_MEMORY = 6 << 20  # the engine refuses a smaller memory limit
# the namespaced sysctls that cannot change the host (Kubernetes' safe set, and the IPC ones)
_SAFE_SYSCTLS = re.compile(
    r"kernel\.(?:shm_rmid_forced|shmall|shmmax|shmmni|msgmax|msgmnb|msgmni|sem)"
    r"|fs\.mqueue\.[a-z_]{1,32}"
    r"|net\.ipv4\.(?:ip_local_port_range|ip_local_reserved_ports|ip_unprivileged_port_start|tcp_syncookies|ping_group_range"
    r"|tcp_keepalive_time|tcp_keepalive_intvl|tcp_keepalive_probes|tcp_fin_timeout)"
    r"|net\.core\.somaxconn"
)
_SYSCTL_VALUE = re.compile(r"[0-9A-Za-z ,._-]{1,64}")
# not nice or rtprio: raising them lets a service outrank the device's own processes (real-time
# threads escape the CPU limit), which takes privileged
_ULIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nofile", "nproc", "rss", "rttime", "sigpending",
            "stack")
_MAX_OPEN_FILES = 1 << 20  # the kernel's default fs.nr_open: a higher nofile fails the container's start
_MAX_GRACE = 300.0  # seconds: the updater waits out each stopping container's grace period
_GPU_CAPABILITIES = ("gpu", "nvidia", "compute", "compat32", "graphics", "utility", "video", "display")
_RESTART = re.compile(r"always|unless-stopped|on-failure(?::\d{1,3})?")
_TMPFS_OPTION = re.compile(r"size=\d+[kmg]?|mode=[0-7]{3,4}|uid=\d{1,10}|gid=\d{1,10}|noexec|nosuid|nodev|ro|rw")
_RESERVED_LABELS = "dev.sealift."


@dataclass(frozen=True, kw_only=True)
class Device:
    """A device node (or a directory of them) the container gets: the first of ``host`` present on the
    device, at ``target`` (the same path when unset), with cgroup ``permissions``."""

    host: tuple[str, ...]
    target: str | None = None
    permissions: str = "rwm"

    def to_data(self) -> str | dict[str, Any]:
        if len(self.host) > 1:
            data: dict[str, Any] = {"one_of": list(self.host)}
            return data | ({"permissions": self.permissions} if self.permissions != "rwm" else {})
        parts = [self.host[0]]
        if self.target is not None or self.permissions != "rwm":
            parts.append(self.target or "")
        if self.permissions != "rwm":
            parts.append(self.permissions)
        return ":".join(parts)

    def __str__(self) -> str:
        return " or ".join(self.host)


@dataclass(frozen=True, kw_only=True)
class DeviceRequest:
    """Compose's ``deploy.resources.reservations.devices`` entry: devices a driver provides (NVIDIA's GPUs)."""

    capabilities: tuple[str, ...]
    driver: str | None = None
    count: int | None = None  # -1: all; None with device_ids
    device_ids: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"capabilities": list(self.capabilities)}
        if self.driver is not None:
            data["driver"] = self.driver
        if self.device_ids:
            data["device_ids"] = list(self.device_ids)
        elif self.count is not None:
            data["count"] = "all" if self.count < 0 else self.count
        return data


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What the container may use: CPUs, memory (bytes), processes; and the memory it is guaranteed."""

    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None
    memory_reservation: int | None = None


@dataclass(frozen=True, kw_only=True)
class Logging:
    """The engine's log driver for the container, rotating at ``max_size`` bytes into ``max_file`` files."""

    driver: str = "json-file"
    max_size: int = 10 << 20
    max_file: int = 3

    def to_data(self) -> dict[str, Any]:
        if self.driver == "none":
            return {"driver": "none"}
        return {"driver": self.driver, "options": {"max-size": str(self.max_size), "max-file": str(self.max_file)}}


DEFAULT_LOGGING = Logging()


@dataclass(frozen=True, kw_only=True)
class Container:
    """Everything about how one service's container runs, beyond its image, command, ports and mounts."""

    user: str | None = None
    group_add: tuple[str, ...] = ()
    group_of: tuple[str, ...] = ()  # device nodes whose owning group the container joins, looked up on the device
    devices: tuple[Device, ...] = ()
    cdi_devices: tuple[str, ...] = ()
    device_requests: tuple[DeviceRequest, ...] = ()
    runtime: str | None = None
    limits: Limits = field(default_factory=Limits)
    shm_size: int | None = None
    ulimits: tuple[tuple[str, int, int], ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    read_only: bool = False
    tmpfs: tuple[tuple[str, str], ...] = ()
    init: bool | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()
    restart: str = "unless-stopped"
    stop_signal: str | None = None
    stop_grace_period: float | None = None
    logging: Logging = DEFAULT_LOGGING
    host_network: bool = False
    sysctls: tuple[tuple[str, str], ...] = ()
    privileged: bool = False
    accelerator: str | None = None  # the shorthand, until a profile resolves it
    requires: tuple[str, ...] = ()  # files the device must have for the container to work (a driver's control node)

    def to_data(self) -> dict[str, Any]:
        """The Compose fields that differ from the defaults, in Compose's words."""
        data: dict[str, Any] = {
            "user": self.user,
            "group_add": [*self.group_add, *({"group_of": p} for p in self.group_of)],
            "devices": [*(d.to_data() for d in self.devices), *self.cdi_devices],
            "runtime": self.runtime,
            "deploy": _deploy_data(self.limits, self.device_requests),
            "shm_size": self.shm_size,
            "ulimits": {name: soft if soft == hard else {"soft": soft, "hard": hard} for name, soft, hard in self.ulimits},
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "security_opt": list(self.security_opt),
            "read_only": self.read_only or None,
            "tmpfs": [f"{path}:{options}" if options else path for path, options in self.tmpfs],
            "init": self.init,
            "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "working_dir": self.working_dir,
            "labels": dict(self.labels),
            "extra_hosts": [f"{name}={address}" for name, address in self.extra_hosts],
            "restart": self.restart if self.restart != "unless-stopped" else None,
            "stop_signal": self.stop_signal,
            "stop_grace_period": format_duration(self.stop_grace_period) if self.stop_grace_period is not None else None,
            "logging": self.logging.to_data() if self.logging != DEFAULT_LOGGING else None,
            "network_mode": "host" if self.host_network else None,
            "sysctls": dict(self.sysctls),
            "privileged": self.privileged or None,
            "x-sealift": {k: v for k, v in (("accelerator", self.accelerator), ("requires", list(self.requires))) if v} or None,
        }
        kept = {key: value for key, value in data.items() if value not in (None, [], {})}
        return kept | ({"entrypoint": []} if self.entrypoint == () else {})  # an empty one clears the image's

    def summary(self) -> list[tuple[str, str]]:
        """What the engine is asked for this container, as (setting, value) pairs for people to read."""
        limits = self.limits
        rows = [
            ("runtime", self.runtime or ""),
            *(("device request", _request_text(r)) for r in self.device_requests),
            *(("device", f"{d} at {d.target or 'the same path'} ({d.permissions})") for d in self.devices),
            *(("CDI device", name) for name in self.cdi_devices),
            ("groups", ", ".join([*self.group_add, *(f"the group of {p}" for p in self.group_of)])),
            ("requires", ", ".join(self.requires)),
            ("accelerator", f"{self.accelerator} (not resolved for a profile)" if self.accelerator else ""),
            ("user", self.user or ""),
            ("limits", ", ".join(part for part in (
                f"{limits.cpus:g} CPU" + ("" if limits.cpus == 1 else "s") if limits.cpus is not None else "",
                f"memory {_mib(limits.memory)}" if limits.memory is not None else "",
                f"{limits.pids} processes" if limits.pids is not None else "",
                f"memory reserved {_mib(limits.memory_reservation)}" if limits.memory_reservation is not None else "") if part)),
            ("logs", "none kept" if self.logging.driver == "none" else
             f"{self.logging.driver}, rotated at {_mib(self.logging.max_size)}, {self.logging.max_file} files"),
            ("network", "the host's" if self.host_network else ""),
            ("privileged", "yes" if self.privileged else ""),
            ("capabilities", " ".join([*(f"+{c}" for c in self.cap_add), *(f"-{c}" for c in self.cap_drop)])),
            ("restart", self.restart),
            ("stop", f"{self.stop_signal or 'SIGTERM'}, killed {self.stop_grace_period or 10:g}s later"),
        ]
        return [(name, value) for name, value in rows if value]

    def with_access(self, access: Access) -> Container:
        """This container with what ``access`` says reaches an accelerator added (the shorthand resolved).
        The caller refuses a runtime of the service's own that differs from the profile's."""
        return replace(
            self,
            runtime=self.runtime or access.runtime,
            devices=(*self.devices, *(d for d in access.devices if d not in self.devices)),
            device_requests=(*self.device_requests, *(r for r in access.device_requests if r not in self.device_requests)),
            cdi_devices=(*self.cdi_devices, *access.cdi_devices),
            group_add=(*self.group_add, *(g for g in access.group_add if g not in self.group_add)),
            group_of=(*self.group_of, *(p for p in access.group_of if p not in self.group_of)),
            requires=(*self.requires, *(p for p in access.requires if p not in self.requires)),
            accelerator=None,
        )


@dataclass(frozen=True, kw_only=True)
class Access:
    """A profile's ``container.accelerator``: how a container reaches this hardware's accelerator."""

    runtime: str | None = None
    devices: tuple[Device, ...] = ()
    cdi_devices: tuple[str, ...] = ()
    device_requests: tuple[DeviceRequest, ...] = ()
    group_add: tuple[str, ...] = ()
    group_of: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    def as_container(self) -> Container:
        return Container().with_access(self)


# --- parsing -----------------------------------------------------------------------------------


def parse_container(f: dict[str, Field], *, any_device_path: bool = False) -> Container:
    """The container settings among a service's fields ``f`` (a Compose file's service mapping).
    Device nodes must be under ``/dev`` unless ``any_device_path`` (a descriptor, which carries what a
    profile named)."""
    device_paths = _ABSOLUTE if any_device_path else _DEV
    host_network = f["network_mode"].string(pattern=re.compile("host"), what='"host" (a release\'s own networks are the default)') \
        == "host" if "network_mode" in f else False
    devices, cdi = _parse_devices(f["devices"], device_paths) if "devices" in f else ((), ())
    group_add, group_of = _parse_groups(f["group_add"], device_paths) if "group_add" in f else ((), ())
    limits, requests = _parse_deploy(f["deploy"]) if "deploy" in f else (Limits(), ())
    limits = _legacy_limits(f, limits)
    if limits.memory is not None and limits.memory_reservation is not None and limits.memory_reservation > limits.memory:
        raise (f.get("mem_reservation") or f["deploy"]).error("reserves more memory than the limit allows")
    wants, requires = _parse_extension(f["x-sealift"]) if "x-sealift" in f else (None, ())
    return Container(
        user=_user(f["user"]) if "user" in f else None,
        group_add=group_add,
        group_of=group_of,
        devices=devices,
        cdi_devices=cdi,
        device_requests=requests,
        runtime=f["runtime"].string(pattern=_RUNTIME, what="a runtime name such as nvidia") if "runtime" in f else None,
        limits=limits,
        shm_size=_bytes(f["shm_size"]) if "shm_size" in f else None,
        ulimits=_parse_ulimits(f["ulimits"]) if "ulimits" in f else (),
        cap_add=_capabilities(f["cap_add"], allowed=SAFE_CAPABILITIES) if "cap_add" in f else (),
        cap_drop=_capabilities(f["cap_drop"], allowed=_CAPABILITIES) if "cap_drop" in f else (),
        security_opt=tuple(_security_opt(item) for item in f["security_opt"].items()) if "security_opt" in f else (),
        read_only=f["read_only"].boolean() if "read_only" in f else False,
        tmpfs=_parse_tmpfs(f["tmpfs"]) if "tmpfs" in f else (),
        init=f["init"].boolean() if "init" in f else None,
        entrypoint=_parse_entrypoint(f["entrypoint"]) if "entrypoint" in f else None,
        working_dir=f["working_dir"].string(pattern=_ABSOLUTE, what="an absolute path") if "working_dir" in f else None,
        labels=_parse_labels(f["labels"]) if "labels" in f else (),
        extra_hosts=_parse_extra_hosts(f["extra_hosts"]) if "extra_hosts" in f else (),
        restart=_restart(f["restart"]) if "restart" in f else "unless-stopped",
        stop_signal=_signal(f["stop_signal"]) if "stop_signal" in f else None,
        stop_grace_period=_grace(f["stop_grace_period"]) if "stop_grace_period" in f else None,
        logging=_parse_logging(f["logging"]) if "logging" in f else DEFAULT_LOGGING,
        host_network=host_network,
        sysctls=_parse_sysctls(f["sysctls"], host_network=host_network) if "sysctls" in f else (),
        privileged=f["privileged"].boolean() if "privileged" in f else False,
        accelerator=wants,
        requires=requires,
    )


def parse_access(field: Field) -> Access:
    """A profile's ``container.accelerator`` section, in the same words as a service's fields.
    Device paths may be anywhere absolute: a profile describes its hardware (and tests map stand-ins)."""
    f = field.mapping(optional=("runtime", "devices", "device_requests", "group_add", "requires"))
    devices, cdi = _parse_devices(f["devices"], _ABSOLUTE) if "devices" in f else ((), ())
    group_add, group_of = _parse_groups(f["group_add"], _ABSOLUTE) if "group_add" in f else ((), ())
    access = Access(
        runtime=f["runtime"].string(pattern=_RUNTIME, what="a runtime name such as nvidia") if "runtime" in f else None,
        devices=devices,
        cdi_devices=cdi,
        device_requests=tuple(_device_request(item) for item in f["device_requests"].items()) if "device_requests" in f else (),
        group_add=group_add,
        group_of=group_of,
        requires=_paths(f["requires"], _ABSOLUTE) if "requires" in f else (),
    )
    if access == Access():
        field.fail("at least one of runtime, devices, device_requests, group_add")
    return access


def _parse_devices(field: Field, where: re.Pattern[str]) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    devices: list[Device] = []
    cdi: list[str] = []
    for item in field.items():
        if isinstance(item.value, str) and _CDI.fullmatch(item.value):
            cdi.append(item.value)
        else:
            devices.append(_device(item, where))
    return tuple(devices), tuple(cdi)


def _device(field: Field, where: re.Pattern[str]) -> Device:
    """``HOST[:CONTAINER[:PERMISSIONS]]``, Compose's ``{source: HOST, target: CONTAINER, permissions: rw}``, or
    ``{one_of: [HOST, ...], permissions: rw}``."""
    path = "a device path under /dev" if where is _DEV else "an absolute device path"
    if isinstance(field.value, dict) and "one_of" not in field.value:
        f = field.mapping(required=("source",), optional=("target", "permissions"))
        text = ":".join([f["source"].string(what=path), f["target"].string(what="a container path") if "target" in f else "",
                         f["permissions"].string(what="cgroup permissions") if "permissions" in f else ""]).rstrip(":")
        return _device(Field(field.file, field.path, text), where)
    if isinstance(field.value, dict):
        f = field.mapping(required=("one_of",), optional=("permissions",))
        hosts = _paths(f["one_of"], where)
        if len(hosts) < 2:
            f["one_of"].fail("two or more device paths")
        permissions = f["permissions"].string(pattern=_PERMISSIONS, what="cgroup permissions such as rw or rwm") \
            if "permissions" in f else "rwm"
        return Device(host=hosts, permissions=permissions)
    text = field.string(what=f"{path} (HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]), or a CDI name")
    host, _, rest = text.partition(":")
    target, _, permissions = rest.partition(":")
    if _HOST_NODES.fullmatch(posixpath.normpath(host)):
        raise field.error(f"{host} reaches the device's disks, memory or kernel log: a service that needs it must be "
                          "privileged, which the spec and the profile must allow")
    if not where.fullmatch(host) or posixpath.normpath(host) != host:
        field.fail(f"{path} (HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]), or a CDI name such as nvidia.com/gpu=all")
    if target and (not _DEV.fullmatch(target) or posixpath.normpath(target) != target):
        field.fail("a container path under /dev")
    if permissions and not _PERMISSIONS.fullmatch(permissions):
        field.fail("cgroup permissions such as rw or rwm")
    return Device(host=(host,), target=target or None, permissions=permissions or "rwm")


def _paths(field: Field, where: re.Pattern[str]) -> tuple[str, ...]:
    what = "a path under /dev" if where is _DEV else "an absolute path"
    paths = field.string_list(pattern=where, what=what)
    for item, path in zip(field.items() if isinstance(field.value, list) else [field], paths, strict=True):
        if posixpath.normpath(path) != path:
            item.fail(f"{what}, written plainly (no '.', '..' or '//')")
        if _HOST_NODES.fullmatch(path):
            raise item.error(f"{path} reaches the device's disks, memory or kernel log")
    return paths


def _parse_groups(field: Field, where: re.Pattern[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    owners: list[str] = []
    for item in field.items():
        if isinstance(item.value, dict):
            owners.extend(_paths(item.mapping(required=("group_of",))["group_of"], where))
        else:
            text = item.scalar_string()
            if not _GROUP.fullmatch(text):
                item.fail("a group name or number, or {group_of: DEVICE_PATH}")
            names.append(text)
    return tuple(names), tuple(owners)


def _parse_deploy(field: Field) -> tuple[Limits, tuple[DeviceRequest, ...]]:
    for key in ("mode", "replicas", "placement", "restart_policy", "rollback_config", "update_config", "endpoint_mode", "labels"):
        if isinstance(field.value, dict) and key in field.value:
            raise field.child(key).error("is not supported: a device runs one container per service, and the updater "
                                         "owns restarts, updates and rollbacks (deploy takes resources only)")
    f = field.mapping(optional=("resources",))
    if "resources" not in f:
        return Limits(), ()
    r = f["resources"].mapping(optional=("limits", "reservations"))
    limits = r["limits"].mapping(optional=("cpus", "memory", "pids")) if "limits" in r else {}
    reserved = r["reservations"].mapping(optional=("memory", "devices")) if "reservations" in r else {}
    return Limits(
        cpus=_cpus(limits["cpus"]) if "cpus" in limits else None,
        memory=_memory(limits["memory"]) if "memory" in limits else None,
        pids=limits["pids"].integer(low=1, high=4_194_304) if "pids" in limits else None,
        memory_reservation=_memory(reserved["memory"]) if "memory" in reserved else None,
    ), tuple(_device_request(item) for item in reserved["devices"].items()) if "devices" in reserved else ()


def _legacy_limits(f: dict[str, Field], limits: Limits) -> Limits:
    """``mem_limit``, ``mem_reservation``, ``cpus`` and ``pids_limit``: the same limits in older Compose words."""
    legacy: tuple[tuple[str, str, Callable[[Field], float]], ...] = (
        ("mem_limit", "memory", _memory), ("mem_reservation", "memory_reservation", _memory), ("cpus", "cpus", _cpus),
        ("pids_limit", "pids", lambda x: x.integer(low=1, high=4_194_304)))
    for key, attr, read in legacy:
        if key in f:
            if getattr(limits, attr) is not None:
                raise f[key].error("is also set in deploy.resources; give it once")
            limits = replace(limits, **{attr: read(f[key])})  # type: ignore[arg-type]
    return limits


def _device_request(field: Field) -> DeviceRequest:
    f = field.mapping(required=("capabilities",), optional=("driver", "count", "device_ids", "options"))
    if "options" in f:
        raise f["options"].error("driver options are not supported")
    capabilities = f["capabilities"].string_list(pattern=re.compile("|".join(_GPU_CAPABILITIES)),
                                                 what=f"a device capability ({', '.join(_GPU_CAPABILITIES)})")
    if "count" in f and "device_ids" in f:
        raise f["count"].error("count and device_ids exclude each other")
    count = None
    if "count" in f:
        count = -1 if f["count"].value == "all" else f["count"].integer(low=1, high=64)
    ids = f["device_ids"].string_list(pattern=re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"), what="a device ID") \
        if "device_ids" in f else ()
    return DeviceRequest(capabilities=capabilities,
                         driver=f["driver"].string(pattern=re.compile("nvidia"), what='"nvidia"') if "driver" in f else None,
                         count=count if ids or count is not None else -1, device_ids=ids)


def _bytes(field: Field) -> int:
    """Compose's byte values: ``536870912``, ``"512m"``, ``"1.5g"``, ``"64kb"``."""
    value = field.value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _BYTES.fullmatch(value.strip()) if isinstance(value, str) and len(value) <= 32 else None
    size = int(float(m[1]) * _BYTE_UNITS[m[2].lower()]) if m is not None else 0
    if not 0 < size < 1 << 50:
        field.fail('a size in bytes such as 536870912, "512m", "64k" or "1.5g" (units b, k, m, g)')
    return size


def _memory(field: Field) -> int:
    size = _bytes(field)
    if size < _MIN_MEMORY:
        field.fail("a memory size of at least 6m (the engine's least)")
    return size


def _cpus(field: Field) -> float:
    value = field.value
    try:
        cpus = float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else -1.0
    except ValueError:
        cpus = -1.0
    if not 0.01 <= cpus <= 1024:
        field.fail('a number of CPUs such as 0.5 or "2"')
    return cpus


def _parse_ulimits(field: Field) -> tuple[tuple[str, int, int], ...]:
    result = []
    for name, sub in field.entries(key_pattern=re.compile("|".join(_ULIMITS)), key_what=f"ulimit ({', '.join(_ULIMITS)})"):
        if isinstance(sub.value, dict):
            f = sub.mapping(required=("soft", "hard"))
            soft, hard = (f[k].integer(low=-1, high=2**62) for k in ("soft", "hard"))
            if hard != -1 and (soft == -1 or soft > hard):
                sub.fail("soft no higher than hard (-1: unlimited)")
        else:
            soft = hard = sub.integer(low=-1, high=2**62)
        if name == "nofile" and not (0 < soft <= _MAX_OPEN_FILES and 0 < hard <= _MAX_OPEN_FILES):
            sub.fail(f"open files from 1 to {_MAX_OPEN_FILES} (the kernel's fs.nr_open)")
        result.append((name, soft, hard))
    return tuple(result)


def _capabilities(field: Field, *, allowed: frozenset[str]) -> tuple[str, ...]:
    names = []
    for item in field.items():
        m = _CAPABILITY.fullmatch(item.string(what="a capability such as NET_BIND_SERVICE").upper())
        if m is None:
            item.fail("a capability such as NET_BIND_SERVICE")
        name = m[1]
        if name not in _CAPABILITIES:
            item.fail("a Linux capability such as NET_BIND_SERVICE")
        if name not in allowed:
            raise item.error(f"capability {name} is outside the subset Sealift grants ({', '.join(sorted(allowed))}); "
                             "a service that needs it must be privileged, which the spec and the profile must allow")
        names.append(name)
    return tuple(names)


def _security_opt(field: Field) -> str:
    """``no-new-privileges`` and a named AppArmor profile; nothing that turns confinement off."""
    text = field.string(what="a security option")
    m = re.fullmatch(r"([a-z-]+)(?:[:=](.*))?", text)
    kind, value = (m[1], m[2] or "") if m else ("", "")
    if kind == "no-new-privileges" and value in ("", "true"):
        return "no-new-privileges:true"
    if kind == "apparmor" and value and value != "unconfined" and _RUNTIME.fullmatch(value):
        return f"apparmor={value}"
    raise field.error(f"{text!r} is not allowed: the subset is no-new-privileges and apparmor=PROFILE "
                      "(seccomp, label and unconfined options weaken the container's confinement)")


def _parse_tmpfs(field: Field) -> tuple[tuple[str, str], ...]:
    result: list[tuple[str, str]] = []
    for item in [field] if isinstance(field.value, str) else field.items():
        path, _, options = item.string(what="PATH[:OPTIONS]").partition(":")
        if not _ABSOLUTE.fullmatch(path) or posixpath.normpath(path) != path or path == "/" \
                or re.match(r"/(proc|sys|dev)(/|$)", path):
            item.fail("an absolute container path (not /, /proc, /sys or /dev), then :OPTIONS such as size=64m,mode=1777")
        if path in (p for p, _ in result):
            raise item.error(f"{path} is given twice")
        if options and not all(_TMPFS_OPTION.fullmatch(o) for o in options.split(",")):
            item.fail("tmpfs options among size=, mode=, uid=, gid=, noexec, nosuid, nodev, ro, rw")
        result.append((path, options))
    return tuple(result)


def _parse_entrypoint(field: Field) -> tuple[str, ...]:
    if isinstance(field.value, str):
        try:
            return tuple(shlex.split(field.value))
        except ValueError:
            field.fail("a command line with balanced quotes, or a list")
    return tuple(item.scalar_string() for item in field.items())


def _pairs(field: Field, *, separators: str, key: re.Pattern[str], what: str) -> list[tuple[str, str, Field]]:
    """A mapping, or a list of ``KEY=VALUE`` (or ``KEY:VALUE``) strings, as (key, value, field); ``what``
    names the key without an article ("label name")."""
    if isinstance(field.value, dict):
        return [(name, sub.scalar_string() if sub.present else "", sub) for name, sub in field.entries(key_pattern=key, key_what=what)]
    pairs = []
    for item in field.items():
        text = item.scalar_string()
        cut = min((i for i in (text.find(s) for s in separators) if i > 0), default=-1)
        if cut < 0 or not key.fullmatch(text[:cut]):
            item.fail(f"{what.upper().replace(' ', '_')}{separators[0]}VALUE")
        pairs.append((text[:cut], text[cut + 1:], item))
    return pairs


def _parse_labels(field: Field) -> tuple[tuple[str, str], ...]:
    labels: list[tuple[str, str]] = []
    for name, value, item in _pairs(field, separators="=", key=_LABEL_KEY, what="label name"):
        if name in dict(labels):
            raise item.error(f"label {name} is given twice")
        if name.startswith(_RESERVED_LABELS):
            raise item.error(f"label {name} is reserved: the updater labels its containers {_RESERVED_LABELS}*")
        labels.append((name, value))
    return tuple(sorted(labels))


def _parse_extra_hosts(field: Field) -> tuple[tuple[str, str], ...]:
    hosts = []
    for name, address, item in _pairs(field, separators="=:", key=_HOST_NAME, what="host name"):
        if address != "host-gateway":
            try:
                ipaddress.ip_address(address.strip("[]"))
            except ValueError:
                item.fail("HOST=ADDRESS with an IP address (or host-gateway)")
        hosts.append((name, address.strip("[]")))
    return tuple(hosts)


def _restart(field: Field) -> str:
    text = field.string(what="a restart policy")
    if text == "no":
        raise field.error('"no" is not allowed: a release must come back after the engine restarts '
                          "(always, unless-stopped or on-failure[:N])")
    if not _RESTART.fullmatch(text):
        field.fail("always, unless-stopped or on-failure[:N]")
    return text


def _grace(field: Field) -> float:
    seconds = field.duration()
    if seconds > _MAX_GRACE:
        field.fail(f"a grace period of at most {_MAX_GRACE:g}s (an update or rollback waits for it)")
    return seconds


def _user(field: Field) -> str:
    text = field.scalar_string()
    if not _USER.fullmatch(text):
        field.fail("a user name or number, optionally :GROUP")
    return text


def _signal(field: Field) -> str:
    text = field.scalar_string()
    known = (text.isdigit() and int(text) <= 64) or re.sub(r"[+-]\d+$", "", text) in _SIGNALS
    if not _SIGNAL.fullmatch(text) or not known:
        field.fail("a signal such as SIGTERM, SIGINT or SIGRTMIN+3")
    return text


def _parse_logging(field: Field) -> Logging:
    f = field.mapping(optional=("driver", "options"))
    driver = f["driver"].string(pattern=re.compile("json-file|local|none"), what="json-file, local or none (drivers "
                                "that keep logs on the device, rotated)") if "driver" in f else "json-file"
    options = f["options"].mapping(optional=("max-size", "max-file")) if "options" in f else {}
    if driver == "none":
        if options:
            raise f["options"].error('mean nothing with driver "none"')
        return Logging(driver="none")
    return Logging(driver=driver,
                   max_size=_bytes(options["max-size"]) if "max-size" in options else DEFAULT_LOGGING.max_size,
                   max_file=_integer_text(options["max-file"], 1, 100) if "max-file" in options else DEFAULT_LOGGING.max_file)


def _integer_text(field: Field, low: int, high: int) -> int:
    text = field.scalar_string()
    if not text.isdigit() or not low <= int(text) <= high:
        field.fail(f"an integer from {low} to {high}")
    return int(text)


def _parse_sysctls(field: Field, *, host_network: bool) -> tuple[tuple[str, str], ...]:
    result: list[tuple[str, str]] = []
    for name, value, item in _pairs(field, separators="=", key=re.compile(r"[a-z0-9_.]{1,64}"), what="sysctl name"):
        if name in dict(result):
            raise item.error(f"sysctl {name} is given twice")
        if not _SAFE_SYSCTLS.fullmatch(name):
            raise item.error(f"sysctl {name} is outside the subset Sealift allows (namespaced ones that cannot change "
                             "the host: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, and some net.ipv4 and net.core)")
        if host_network and name.startswith("net."):
            raise item.error(f"sysctl {name} would change the host's network: the service uses network_mode host")
        if not _SYSCTL_VALUE.fullmatch(value):
            item.fail("a value of digits, letters and spaces")
        result.append((name, value))
    return tuple(result)


def _parse_extension(field: Field) -> tuple[str | None, tuple[str, ...]]:
    f = field.mapping(optional=("accelerator", "requires"))
    wants = f["accelerator"].string(pattern=re.compile("|".join(ACCELERATOR_WANTS)), what="required or preferred") \
        if "accelerator" in f else None
    return wants, _paths(f["requires"], _ABSOLUTE) if "requires" in f else ()


def _deploy_data(limits: Limits, requests: tuple[DeviceRequest, ...]) -> dict[str, Any] | None:
    limit = {"cpus": repr(limits.cpus) if limits.cpus is not None else None, "memory": limits.memory, "pids": limits.pids}
    reserve = {"memory": limits.memory_reservation, "devices": [r.to_data() for r in requests] or None}
    resources = {k: v for k, v in (("limits", _present(limit)), ("reservations", _present(reserve))) if v}
    return {"resources": resources} if resources else None


def _request_text(request: DeviceRequest) -> str:
    which = ", ".join(request.device_ids) if request.device_ids else "all" if request.count == -1 else str(request.count)
    return f"{which} from {request.driver or 'any driver'} with {', '.join(request.capabilities)}"


def _mib(size: int | None) -> str:
    value = (size or 0) / (1 << 20)
    return f"{value:g} MiB" if value >= 1 else f"{(size or 0) >> 10} KiB"


def _present(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}
