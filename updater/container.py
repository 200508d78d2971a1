"""How a service's container runs: the Compose fields beyond image, command, ports and mounts.

Users and groups, devices and accelerator requests (:mod:`updater.accelerator`), the container
runtime, resource limits, logging with rotation, capabilities and the other settings production
edge services declare (what could reach beyond the container is :mod:`updater.confinement`'s),
parsed from Compose's own words (docs/spec.md has the table of every Compose service field). The
same parser reads ``sealift.yaml``'s Compose file at build time and a bundle's descriptor on the
device, so what the builder checked is what the device runs.

One addition to Compose's words: a service's ``x-sealift: {accelerator: required|preferred}`` asks
for whatever its profile says reaches the accelerator; the build resolves it per profile
(:meth:`Container.with_access`), so the descriptor holds plain settings.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from updater.accelerator import (
    ABSOLUTE,
    DEV,
    RUNTIME,
    Access,
    Device,
    DeviceRequest,
    device_request,
    parse_devices,
    parse_groups,
    parse_paths,
    plain_path,
    request_text,
)
from updater.confinement import capabilities, check_sysctl, security_option, ulimits
from updater.yamlfile import Field, format_duration

__all__ = [
    "ACCELERATOR_WANTS",
    "CONTAINER_FIELDS",
    "DEFAULT_LOGGING",
    "Container",
    "Limits",
    "Logging",
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
_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

_SIGNAL = re.compile(r"SIGRTMIN\+(?:[1-9]|1[0-5])|SIGRTMAX-(?:[1-9]|1[0-4])|SIG[A-Z0-9]{2,10}|[1-9]\d?")
_SIGNALS = frozenset({
    "SIGABRT", "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCONT", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGIO", "SIGKILL",
    "SIGPIPE", "SIGPROF", "SIGPWR", "SIGQUIT", "SIGSEGV", "SIGSTKFLT", "SIGSTOP", "SIGSYS", "SIGTERM", "SIGTRAP",
    "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGUSR1", "SIGUSR2", "SIGVTALRM", "SIGWINCH", "SIGXCPU", "SIGXFSZ",
    "SIGRTMIN", "SIGRTMAX",
})
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")

_MIN_MEMORY = 6 << 20  # the engine refuses a smaller memory limit
_MAX_GRACE = 300.0  # seconds: the updater waits out each stopping container's grace period
_RESTART = re.compile(r"always|unless-stopped|on-failure(?::\d{1,3})?")
_TMPFS_OPTION = re.compile(r"size=\d+[kmg]?|mode=[0-7]{3,4}|uid=\d{1,10}|gid=\d{1,10}|noexec|nosuid|nodev|ro|rw")
_RESERVED_LABELS = "dev.sealift."


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
            *(("device request", request_text(r)) for r in self.device_requests),
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


# --- parsing -----------------------------------------------------------------------------------


def parse_container(f: dict[str, Field], *, any_device_path: bool = False) -> Container:
    """The container settings among a service's fields ``f`` (a Compose file's service mapping).
    Device nodes must be under ``/dev`` unless ``any_device_path`` (a descriptor, which carries what a
    profile named)."""
    device_paths = ABSOLUTE if any_device_path else DEV
    host_network = f["network_mode"].string(pattern=re.compile("host"), what='"host" (a release\'s own networks are the default)') \
        == "host" if "network_mode" in f else False
    devices, cdi = parse_devices(f["devices"], device_paths) if "devices" in f else ((), ())
    group_add, group_of = parse_groups(f["group_add"], device_paths) if "group_add" in f else ((), ())
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
        runtime=f["runtime"].string(pattern=RUNTIME, what="a runtime name such as nvidia") if "runtime" in f else None,
        limits=limits,
        shm_size=_bytes(f["shm_size"]) if "shm_size" in f else None,
        ulimits=ulimits(f["ulimits"]) if "ulimits" in f else (),
        cap_add=capabilities(f["cap_add"], adding=True) if "cap_add" in f else (),
        cap_drop=capabilities(f["cap_drop"], adding=False) if "cap_drop" in f else (),
        security_opt=tuple(security_option(item) for item in f["security_opt"].items()) if "security_opt" in f else (),
        read_only=f["read_only"].boolean() if "read_only" in f else False,
        tmpfs=_parse_tmpfs(f["tmpfs"]) if "tmpfs" in f else (),
        init=f["init"].boolean() if "init" in f else None,
        entrypoint=_parse_entrypoint(f["entrypoint"]) if "entrypoint" in f else None,
        working_dir=f["working_dir"].string(pattern=ABSOLUTE, what="an absolute path") if "working_dir" in f else None,
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
    ), tuple(device_request(item) for item in reserved["devices"].items()) if "devices" in reserved else ()


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


def _parse_tmpfs(field: Field) -> tuple[tuple[str, str], ...]:
    result: list[tuple[str, str]] = []
    for item in [field] if isinstance(field.value, str) else field.items():
        path, _, options = item.string(what="PATH[:OPTIONS]").partition(":")
        if not ABSOLUTE.fullmatch(path) or not plain_path(path) or path == "/" \
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
        check_sysctl(item, name, value, host_network=host_network)
        result.append((name, value))
    return tuple(result)


def _parse_extension(field: Field) -> tuple[str | None, tuple[str, ...]]:
    f = field.mapping(optional=("accelerator", "requires"))
    wants = f["accelerator"].string(pattern=re.compile("|".join(ACCELERATOR_WANTS)), what="required or preferred") \
        if "accelerator" in f else None
    return wants, parse_paths(f["requires"], ABSOLUTE) if "requires" in f else ()


def _deploy_data(limits: Limits, requests: tuple[DeviceRequest, ...]) -> dict[str, Any] | None:
    limit = {"cpus": repr(limits.cpus) if limits.cpus is not None else None, "memory": limits.memory, "pids": limits.pids}
    reserve = {"memory": limits.memory_reservation, "devices": [r.to_data() for r in requests] or None}
    resources = {k: v for k, v in (("limits", _present(limit)), ("reservations", _present(reserve))) if v}
    return {"resources": resources} if resources else None


def _mib(size: int | None) -> str:
    value = (size or 0) / (1 << 20)
    return f"{value:g} MiB" if value >= 1 else f"{(size or 0) >> 10} KiB"


def _present(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}
