"""How a container reaches hardware: device nodes, device requests, groups and runtime.

The Compose words for it (``devices``, ``deploy.resources.reservations.devices``, ``group_add``,
``runtime``), two additions a profile needs (``one_of``: the first of several nodes present on the
device, for a Coral on USB or PCIe; ``group_of``: the group that owns a node there, for an NPU's
``render`` group, whose number differs from host to host), and a profile's ``container.accelerator``
section, which says in the same words how a container reaches that hardware's accelerator.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from updater.confinement import names_host_node
from updater.yamlfile import Field

__all__ = ["ABSOLUTE", "DEV", "RUNTIME", "Access", "Device", "DeviceRequest", "device_request", "parse_access", "parse_devices",
           "parse_groups", "parse_paths", "plain_path", "request_text"]

ABSOLUTE = re.compile(r"/[A-Za-z0-9._/@+-]{0,255}")  # where a profile or a descriptor may name a node
DEV = re.compile(r"/dev/[A-Za-z0-9._/@+-]{1,250}")  # where a Compose file may
RUNTIME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # a container runtime's name
_GROUP = re.compile(r"[a-z_][a-z0-9_-]{0,31}|\d{1,10}")
_CDI = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}=[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
_PERMISSIONS = re.compile(r"(?=.)r?w?m?")
_GPU_CAPABILITIES = ("gpu", "nvidia", "compute", "compat32", "graphics", "utility", "video", "display")


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
class Access:
    """A profile's ``container.accelerator``: how a container reaches this hardware's accelerator."""

    runtime: str | None = None
    devices: tuple[Device, ...] = ()
    cdi_devices: tuple[str, ...] = ()
    device_requests: tuple[DeviceRequest, ...] = ()
    group_add: tuple[str, ...] = ()
    group_of: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


def parse_access(field: Field) -> Access:
    """A profile's ``container.accelerator`` section, in the same words as a service's fields.
    Device paths may be anywhere absolute: a profile describes its hardware (and tests map stand-ins)."""
    f = field.mapping(optional=("runtime", "devices", "device_requests", "group_add", "requires"))
    devices, cdi = parse_devices(f["devices"], ABSOLUTE) if "devices" in f else ((), ())
    group_add, group_of = parse_groups(f["group_add"], ABSOLUTE) if "group_add" in f else ((), ())
    access = Access(
        runtime=f["runtime"].string(pattern=RUNTIME, what="a runtime name such as nvidia") if "runtime" in f else None,
        devices=devices,
        cdi_devices=cdi,
        device_requests=tuple(device_request(item) for item in f["device_requests"].items()) if "device_requests" in f else (),
        group_add=group_add,
        group_of=group_of,
        requires=parse_paths(f["requires"], ABSOLUTE) if "requires" in f else (),
    )
    if access == Access():
        field.fail("at least one of runtime, devices, device_requests, group_add")
    return access


def parse_devices(field: Field, where: re.Pattern[str]) -> tuple[tuple[Device, ...], tuple[str, ...]]:
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
    path = "a device path under /dev" if where is DEV else "an absolute device path"
    if isinstance(field.value, dict) and "one_of" not in field.value:
        f = field.mapping(required=("source",), optional=("target", "permissions"))
        text = ":".join([f["source"].string(what=path), f["target"].string(what="a container path") if "target" in f else "",
                         f["permissions"].string(what="cgroup permissions") if "permissions" in f else ""]).rstrip(":")
        return _device(Field(field.file, field.path, text), where)
    if isinstance(field.value, dict):
        f = field.mapping(required=("one_of",), optional=("permissions",))
        hosts = parse_paths(f["one_of"], where)
        if len(hosts) < 2:
            f["one_of"].fail("two or more device paths")
        permissions = f["permissions"].string(pattern=_PERMISSIONS, what="cgroup permissions such as rw or rwm") \
            if "permissions" in f else "rwm"
        return Device(host=hosts, permissions=permissions)
    text = field.string(what=f"{path} (HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]), or a CDI name")
    host, _, rest = text.partition(":")
    target, _, permissions = rest.partition(":")
    if names_host_node(host):
        raise field.error(f"{host} reaches the device's disks, memory or kernel log: a service that needs it must be "
                          "privileged, which the spec and the profile must allow")
    if not where.fullmatch(host) or not plain_path(host):
        field.fail(f"{path} (HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]), or a CDI name such as nvidia.com/gpu=all")
    if target and (not DEV.fullmatch(target) or not plain_path(target)):
        field.fail("a container path under /dev")
    if permissions and not _PERMISSIONS.fullmatch(permissions):
        field.fail("cgroup permissions such as rw or rwm")
    return Device(host=(host,), target=target or None, permissions=permissions or "rwm")


def plain_path(path: str) -> bool:
    """Whether an absolute ``path`` is written plainly: no '.', '..' or '//' (POSIX keeps a leading '//',
    which names the same node as '/': ``//dev/mem`` is ``/dev/mem``)."""
    return posixpath.normpath(path) == path and not path.startswith("//")


def parse_paths(field: Field, where: re.Pattern[str]) -> tuple[str, ...]:
    what = "a path under /dev" if where is DEV else "an absolute path"
    paths = field.string_list(pattern=where, what=what)
    for item, path in zip(field.items() if isinstance(field.value, list) else [field], paths, strict=True):
        if not plain_path(path):
            item.fail(f"{what}, written plainly (no '.', '..' or '//')")
        if names_host_node(path):
            raise item.error(f"{path} reaches the device's disks, memory or kernel log")
    return paths


def parse_groups(field: Field, where: re.Pattern[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    owners: list[str] = []
    for item in field.items():
        if isinstance(item.value, dict):
            owners.extend(parse_paths(item.mapping(required=("group_of",))["group_of"], where))
        else:
            text = item.scalar_string()
            if not _GROUP.fullmatch(text):
                item.fail("a group name or number, or {group_of: DEVICE_PATH}")
            names.append(text)
    return tuple(names), tuple(owners)


def device_request(field: Field) -> DeviceRequest:
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


def request_text(request: DeviceRequest) -> str:
    which = ", ".join(request.device_ids) if request.device_ids else "all" if request.count == -1 else str(request.count)
    return f"{which} from {request.driver or 'any driver'} with {', '.join(request.capabilities)}"
