"""Which hardware profile this device is, and the evidence for it.

Profiles carry detection rules as data (docs/profiles.md): the CPU architecture, files and device
nodes, PCI and USB IDs, device-tree compatible strings. They are read from a system root (``/``
on a device, a prepared tree in tests): ``/sys/bus/pci/devices/*/{vendor,device}``,
``/sys/bus/usb/devices/*/{idVendor,idProduct}`` and ``/proc/device-tree/compatible`` (or
``/sys/firmware/devicetree/base/compatible``). The most specific match (highest priority) wins.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from updater.container import Container
from updater.errors import InputError
from updater.needs import lacking_for
from updater.profiles import Profile, Rule
from updater.runtime import EngineFeatures

__all__ = ["AcceleratorCheck", "Detection", "Hardware", "accelerator_check", "detect_profile"]

_MAX_ID_BYTES = 64
_MAX_DT_BYTES = 64 << 10


@dataclass(frozen=True, kw_only=True)
class Detection:
    """A matching profile and the rules that matched, each with what proved it."""

    profile: Profile
    evidence: tuple[tuple[Rule, str], ...]


@dataclass(frozen=True, kw_only=True)
class AcceleratorCheck:
    """Whether a container can reach the profile's accelerator here: what is missing, and whether the
    engine was asked (its runtimes) or not (it did not answer, or the files are another system's)."""

    declared: bool  # the profile says how a container reaches an accelerator
    missing: tuple[str, ...] = ()
    engine_checked: bool = False

    def __str__(self) -> str:
        if not self.declared:
            return "none declared by the profile"
        if self.missing:
            return "not usable: needs " + "; ".join(self.missing)
        return "usable" + ("" if self.engine_checked else " (the engine was not asked for its runtimes)")

    def to_json(self) -> dict[str, object]:
        return {"declared": self.declared, "usable": self.declared and not self.missing, "missing": list(self.missing),
                "engine_checked": self.engine_checked}


def accelerator_check(profile: Profile, *, root: Path, engine: EngineFeatures | None) -> AcceleratorCheck:
    """Whether what ``profile``'s ``container.accelerator`` names is present under ``root`` (and in ``engine``)."""
    if profile.access is None:
        return AcceleratorCheck(declared=False)
    missing = lacking_for(Container().with_access(profile.access), engine=engine, root=root)
    return AcceleratorCheck(declared=True, missing=tuple(missing), engine_checked=engine is not None)


class Hardware:
    """What a system root shows of its hardware, read once."""

    def __init__(self, root: Path = Path("/"), *, machine: str | None = None) -> None:
        self.root = root
        self.machine = machine or platform.machine()
        self.pci = _ids(root / "sys/bus/pci/devices", "vendor", "device")
        self.usb = _ids(root / "sys/bus/usb/devices", "idVendor", "idProduct")
        self.compatible = _device_tree(root)

    def proves(self, rule: Rule) -> str | None:
        """What shows ``rule`` holds here (a path, a device, a string), or None."""
        if rule.kind == "cpu_arch":
            return f"uname -m = {self.machine}" if self.machine == rule.value else None
        if rule.kind == "file":
            path = self.root / rule.value.lstrip("/")
            return rule.value if path.exists() or path.is_symlink() else None
        if rule.kind in ("pci", "usb"):
            vendor, _, device = rule.value.partition(":")
            found = self.pci if rule.kind == "pci" else self.usb
            return next((f"{rule.kind} {v}:{d} at {where}" for where, (v, d) in sorted(found.items())
                         if v == vendor and device in ("*", d)), None)
        if rule.kind == "device_tree":
            return f"device-tree compatible {rule.value}" if rule.value in self.compatible else None
        return None


def detect_profile(profiles: Iterable[Profile], hardware: Hardware) -> Detection:
    """The most specific profile whose rules all hold (and one of its ``any`` rules, if it has them)."""
    matches = [d for p in profiles if p.detect_all or p.detect_any if (d := _match(p, hardware)) is not None]
    if not matches:
        raise InputError(
            f"no hardware profile matches this device (uname -m {hardware.machine}, {len(hardware.pci)} PCI and "
            f"{len(hardware.usb)} USB devices seen); add a profile with detection rules for it"
        )
    matches.sort(key=lambda d: -d.profile.priority)
    if len(matches) > 1 and matches[0].profile.priority == matches[1].profile.priority:
        tied = ", ".join(sorted(d.profile.name for d in matches if d.profile.priority == matches[0].profile.priority))
        raise InputError(f"several profiles match this device equally ({tied}); give one a higher priority")
    return matches[0]


def _match(profile: Profile, hardware: Hardware) -> Detection | None:
    evidence = []
    for rule in profile.detect_all:
        proof = hardware.proves(rule)
        if proof is None:
            return None
        evidence.append((rule, proof))
    if profile.detect_any:
        proved = [(rule, proof) for rule in profile.detect_any if (proof := hardware.proves(rule)) is not None]
        if not proved:
            return None
        evidence += proved
    return Detection(profile=profile, evidence=tuple(evidence))


def _ids(directory: Path, vendor_file: str, device_file: str) -> dict[str, tuple[str, str]]:
    """Device address -> (vendor, device) in lower-case hex without 0x."""
    found: dict[str, tuple[str, str]] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return found
    for entry in entries:
        vendor, device = _hex(entry / vendor_file), _hex(entry / device_file)
        if vendor and device:
            found[entry.name] = (vendor, device)
    return found


def _hex(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_ID_BYTES).decode("ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        return None
    value = text.removeprefix("0x")
    return value.zfill(4) if value and all(c in "0123456789abcdef" for c in value) else None


def _device_tree(root: Path) -> set[str]:
    for candidate in ("proc/device-tree/compatible", "sys/firmware/devicetree/base/compatible"):
        try:
            with open(root / candidate, "rb") as f:
                data = f.read(_MAX_DT_BYTES)
        except OSError:
            continue
        return {part.decode("ascii", "replace") for part in data.split(b"\0") if part}
    return set()
