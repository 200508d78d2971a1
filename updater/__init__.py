"""Sealift's device side, and the core both sides share: read and check bundles, overlays and media,
verify them with TUF, and install them A/B on the container engine.

Names are imported when first used, so a command loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

from updater.errors import Conflict, ContentMismatch, DeliveryError, DeviceFault, EngineFault, InputError, Refused, SealiftError, Unhealthy

__all__ = [
    "BundleInfo",
    "Conflict",
    "ContentMismatch",
    "DeliveryError",
    "DeviceFault",
    "EngineFault",
    "InputError",
    "Profile",
    "Refused",
    "SealiftError",
    "Unhealthy",
    "check_bundle",
    "load_profiles",
    "verify_bundle",
    "verify_for_device",
]

_WHERE = {
    "BundleInfo": "updater.bundle",
    "check_bundle": "updater.bundle",
    "verify_bundle": "updater.bundle",
    "Profile": "updater.profiles",
    "load_profiles": "updater.profiles",
    "verify_for_device": "updater.verify",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'updater' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
