"""Hardware profiles: data files describing a class of device and how to recognise it.

A profile names the OCI platform its images must be built for, the accelerators it offers, a
``compatible`` string that bundles carry and devices check, and detection rules the updater
evaluates on the device. Profiles are YAML files: Sealift ships some (``profiles/``), and users
add their own directories without touching code.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from updater.accelerator import Access, parse_access
from updater.errors import InputError
from updater.names import NAME
from updater.yamlfile import Field, load_yaml

__all__ = ["RESERVED_NAMES", "Accelerator", "Platform", "Profile", "Rule", "builtin_profile_dir", "load_profiles",
           "profile_search_path"]

RESERVED_NAMES = ("overlays", "rollout")  # what a target's second part means besides a profile

_HEX4 = re.compile(r"[0-9a-f]{4}")
_ARCHES = ("amd64", "arm64", "arm", "386", "riscv64", "ppc64le", "s390x")
RULE_KINDS = ("file", "pci", "usb", "device_tree", "cpu_arch")


@dataclass(frozen=True, kw_only=True)
class Platform:
    """An OCI platform (the image index's ``platform`` object)."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Platform) -> bool:
        """Whether an image for ``other`` runs here (arm64 without a variant means v8)."""
        return (self.os, self.architecture, _norm_variant(self)) == (
            other.os, other.architecture, _norm_variant(other)
        )


def _norm_variant(platform: Platform) -> str | None:
    if platform.architecture == "arm64" and platform.variant is None:
        return "v8"
    return platform.variant


@dataclass(frozen=True, kw_only=True)
class Accelerator:
    kind: str  # gpu, npu, tpu, ...
    vendor: str
    model: str | None = None


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One piece of evidence: a file or device node, a PCI or USB ID, a device-tree string, a CPU."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A class of hardware that gets its own bundle."""

    name: str
    description: str
    platform: Platform
    compatible: str
    accelerators: tuple[Accelerator, ...] = ()
    capabilities: tuple[str, ...] = ()
    detect_all: tuple[Rule, ...] = ()
    detect_any: tuple[Rule, ...] = ()
    priority: int = 0
    access: Access | None = None  # how a container reaches the accelerator (container.accelerator)
    allow_privileged: bool = False  # whether a spec may run privileged containers on this hardware
    source: Path | None = None


def builtin_profile_dir() -> Path:
    """The directory of the profiles that ship with Sealift.

    An installed wheel carries them as the data package ``updater.builtin_profiles``; a source
    checkout (and an editable install) reads the repository's ``profiles/``.
    """
    spec = importlib.util.find_spec("updater.builtin_profiles")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else Path(__file__).resolve().parent.parent / "profiles"


def profile_search_path(spec_dir: Path | None = None, extra: Iterable[Path] = ()) -> list[Path]:
    """Where profiles come from, later replacing earlier: the built-in ones, ``$SEALIFT_PROFILE_PATH``,
    ``profiles/`` next to the spec, then ``extra`` (``--profiles-dir``)."""
    dirs = [builtin_profile_dir()]
    dirs += [Path(p) for p in os.environ.get("SEALIFT_PROFILE_PATH", "").split(os.pathsep) if p]
    local = spec_dir / "profiles" if spec_dir is not None else None
    if local is not None and local.is_dir() and local.resolve() != builtin_profile_dir().resolve():
        dirs.append(local)
    return [*dirs, *extra]


def load_profiles(directories: Iterable[Path]) -> dict[str, Profile]:
    """Every ``*.yaml`` profile in ``directories``; a later directory's profile replaces an earlier one."""
    profiles: dict[str, Profile] = {}
    for directory in directories:
        if not directory.is_dir():
            raise InputError(f"{directory}: profile directory not found")
        for path in sorted(directory.glob("*.yaml")):
            profile = load_profile(path)
            profiles[profile.name] = profile
    return profiles


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file."""
    top = load_yaml(path, what="profile").mapping(
        required=("name", "platform", "compatible"),
        optional=("description", "accelerators", "capabilities", "detect", "priority", "container"),
    )
    name = top["name"].string(pattern=NAME, what="a profile name")
    if name in RESERVED_NAMES:  # the second part of a target's name: NAME/rollout/VERSION is a plan, NAME/overlays/... an overlay
        raise top["name"].error(f"{name!r} is reserved (a profile may not be called {' or '.join(RESERVED_NAMES)})")
    if path.stem != name:
        raise top["name"].error(f"{name!r} differs from the file name {path.name!r}")
    detect = top["detect"].mapping(optional=("all", "any")) if "detect" in top else {}
    container = top["container"].mapping(optional=("accelerator", "allow_privileged")) if "container" in top else {}
    return Profile(
        name=name,
        description=top["description"].string() if "description" in top else "",
        platform=_platform(top["platform"]),
        compatible=top["compatible"].string(pattern=re.compile(r"[\x21-\x7e]{1,128}"), what="printable text"),
        accelerators=tuple(_accelerator(a) for a in top["accelerators"].items()) if "accelerators" in top else (),
        capabilities=top["capabilities"].string_list(pattern=NAME, what="a capability") if "capabilities" in top else (),
        detect_all=_rules(detect["all"]) if "all" in detect else (),
        detect_any=_rules(detect["any"]) if "any" in detect else (),
        priority=top["priority"].integer(low=0, high=1000) if "priority" in top else 0,
        access=parse_access(container["accelerator"]) if "accelerator" in container else None,
        allow_privileged=container["allow_privileged"].boolean() if "allow_privileged" in container else False,
        source=path,
    )


def _platform(field: Field) -> Platform:
    f = field.mapping(required=("os", "architecture"), optional=("variant",))
    arch_pattern = re.compile("|".join(_ARCHES))
    return Platform(
        os=f["os"].string(pattern=re.compile("linux"), what='"linux"'),
        architecture=f["architecture"].string(pattern=arch_pattern, what=f"one of {', '.join(_ARCHES)}"),
        variant=f["variant"].string(pattern=re.compile(r"v\d+"), what="a variant such as v8") if "variant" in f else None,
    )


def _accelerator(field: Field) -> Accelerator:
    f = field.mapping(required=("kind", "vendor"), optional=("model",))
    return Accelerator(
        kind=f["kind"].string(pattern=NAME, what="an accelerator kind such as gpu or npu"),
        vendor=f["vendor"].string(pattern=NAME, what="a vendor name"),
        model=f["model"].string() if "model" in f else None,
    )


def _rules(field: Field) -> tuple[Rule, ...]:
    rules = []
    for item in field.items():
        f = item.mapping(optional=RULE_KINDS)
        if len(f) != 1:
            item.fail(f"one rule of: {', '.join(RULE_KINDS)}")
        ((kind, value),) = f.items()
        rules.append(Rule(kind=kind, value=_rule_value(kind, value)))
    return tuple(rules)


def _rule_value(kind: str, field: Field) -> str:
    if kind in ("pci", "usb"):
        text = field.string(what="VENDOR:DEVICE in hex, such as 10de:* or 1e60:2864").lower()
        vendor, _, device = text.partition(":")
        if not _HEX4.fullmatch(vendor) or not (device == "*" or _HEX4.fullmatch(device)):
            field.fail("VENDOR:DEVICE in hex, such as 10de:* or 1e60:2864")
        return text
    if kind == "file":
        text = field.string(what="an absolute path")
        if not text.startswith("/"):
            field.fail("an absolute path")
        return text
    if kind == "cpu_arch":
        return field.string(pattern=re.compile(r"x86_64|aarch64|armv7l|riscv64"), what="a machine name as uname -m prints it")
    return field.string(what="a device-tree compatible string such as nvidia,tegra234")
