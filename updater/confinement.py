"""What a release's containers may be given, and what takes privileged: the safe subsets.

A container confined as Docker confines it by default reaches nothing of the device beyond what
it is given. These are the parts of the Compose subset that could give it more: capabilities,
security options, sysctls, resource limits that let it outrank the device's own processes, and
device nodes that reach the device's disks, flash, memory or kernel log. Each is checked twice:
by name when a Compose file, a profile or a descriptor is parsed, and (device nodes) by what the
node really is on the device before the switch, where a symlink or a directory could hide one.
Everything refused here is allowed only to a privileged container, which the spec and the
profile must both allow.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from updater.errors import Refused
from updater.yamlfile import Field

if TYPE_CHECKING:
    from updater.appdef import App

__all__ = ["SAFE_CAPABILITIES", "capabilities", "check_sysctl", "names_host_node", "reaching_the_host", "refuse_privileges",
           "security_option", "ulimits"]

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
# privileged; the device also looks at what each node really is before the switch
_HOST_NODES = re.compile(
    r"/dev(?:/(?:mem|kmem|port|kmsg|mapper|disk|block|char|cpu|root|cdrom|snapshot|bsg|zvol|sd[a-z]{1,2}\d*|(?:hd|vd|xvd)[a-z]\d*"
    r"|nvme\d.*|mmcblk\d.*|loop.*|dm-\d+|md\d*|sr\d+|sg\d+|nbd\d+|zram\d+|ram\d+|mtd.*|ubi.*|pmem.*|dax.*|zd\d+.*|rbd.*)"
    r"(?:/.*)?)?"
)
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
_APPARMOR_PROFILE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_MEMORY_NODES = {(1, 1), (1, 2), (1, 4), (1, 11)}  # /dev/mem, kmem, port, kmsg
_RAW_MAJORS = {21, 90}  # SCSI generic, MTD flash
_MAX_NODES = 4096  # looked at in a directory of device nodes


def capabilities(field: Field, *, adding: bool) -> tuple[str, ...]:
    """Linux capability names (``CAP_`` optional); those added must be in :data:`SAFE_CAPABILITIES`."""
    names = []
    for item in field.items():
        m = _CAPABILITY.fullmatch(item.string(what="a capability such as NET_BIND_SERVICE").upper())
        if m is None or m[1] not in _CAPABILITIES:
            item.fail("a Linux capability such as NET_BIND_SERVICE")
        if adding and m[1] not in SAFE_CAPABILITIES:
            raise item.error(f"capability {m[1]} is outside the subset Sealift grants ({', '.join(sorted(SAFE_CAPABILITIES))}); "
                             "a service that needs it must be privileged, which the spec and the profile must allow")
        names.append(m[1])
    return tuple(names)


def security_option(field: Field) -> str:
    """``no-new-privileges`` and a named AppArmor profile; nothing that turns confinement off."""
    text = field.string(what="a security option")
    m = re.fullmatch(r"([a-z-]+)(?:[:=](.*))?", text)
    kind, value = (m[1], m[2] or "") if m else ("", "")
    if kind == "no-new-privileges" and value in ("", "true"):
        return "no-new-privileges:true"
    if kind == "apparmor" and value and value != "unconfined" and _APPARMOR_PROFILE.fullmatch(value):
        return f"apparmor={value}"
    raise field.error(f"{text!r} is not allowed: the subset is no-new-privileges and apparmor=PROFILE "
                      "(seccomp, label and unconfined options weaken the container's confinement)")


def check_sysctl(field: Field, name: str, value: str, *, host_network: bool) -> None:
    """A namespaced sysctl that cannot change the host."""
    if not _SAFE_SYSCTLS.fullmatch(name):
        raise field.error(f"sysctl {name} is outside the subset Sealift allows (namespaced ones that cannot change "
                          "the host: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, and some net.ipv4 and net.core)")
    if host_network and name.startswith("net."):
        raise field.error(f"sysctl {name} would change the host's network: the service uses network_mode host")
    if not _SYSCTL_VALUE.fullmatch(value):
        field.fail("a value of digits, letters and spaces")


def ulimits(field: Field) -> tuple[tuple[str, int, int], ...]:
    """Compose's ``ulimits``: (name, soft, hard) each, ``-1`` for unlimited."""
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


def names_host_node(path: str) -> bool:
    """Whether ``path`` names a node of the device's disks, flash, memory or kernel log (however it is
    spelt: ``//dev/mem`` and ``/dev/./mem`` are ``/dev/mem``)."""
    return _HOST_NODES.fullmatch(posixpath.normpath("/" + path.lstrip("/"))) is not None


def reaching_the_host(app: App, *, root: Path = Path("/")) -> list[str]:
    """The device nodes ``app``'s services would get that reach the device's disks, flash, memory or
    kernel log, judged by what each node is (a name can be a symlink, a directory holds every node
    below it): what only a privileged container may have."""
    found = []
    for service in app.services:
        for device in service.container.devices:
            path = next((root / p.lstrip("/") for p in device.host if (root / p.lstrip("/")).exists()), None)
            if path is not None and (what := _host_node(path)):
                found.append(f"service {service.name} would reach {what}")
    return found


def _host_node(path: Path) -> str | None:
    """What of the host ``path`` (a node, or a directory of nodes) reaches beyond a container, or None."""
    nodes = [path.resolve()]
    if nodes[0].is_dir():
        nodes = [p for _, p in zip(range(_MAX_NODES), nodes[0].rglob("*"), strict=False)]
    for node in nodes:
        try:
            found = node.stat()
        except OSError:
            continue
        if stat.S_ISBLK(found.st_mode):
            return f"{node}, a block device"
        if stat.S_ISCHR(found.st_mode) and ((os.major(found.st_rdev), os.minor(found.st_rdev)) in _MEMORY_NODES
                                            or os.major(found.st_rdev) in _RAW_MAJORS):
            return f"{node} (device {os.major(found.st_rdev)}:{os.minor(found.st_rdev)})"
    return None


def refuse_privileges(app: App, *, allowed: bool, release: str) -> None:
    """Refused when ``release`` runs a privileged container, or reaches the device's disks, memory or kernel
    log through a device node, and the device's profile does not allow privileged containers (``allowed``)."""
    if allowed:
        return
    if privileged := [s.name for s in app.services if s.container.privileged]:
        raise Refused(f"{release} runs service {privileged[0]} privileged, which this device's profile "
                      "does not allow (its container.allow_privileged)")
    if reaching := reaching_the_host(app):
        raise Refused(f"{release}: {reaching[0]}, which only a privileged container may, and this "
                      "device's profile does not allow them (its container.allow_privileged)")
