"""Sealift's build side: bundle specs, and the signed OCI bundles built from them for each hardware profile.

What a bundle is, and the check both sides run on it, come from the device side (:mod:`updater`).
Names are imported when first used, so a command loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BuildOptions",
    "BuiltBundle",
    "Spec",
    "build_bundles",
    "load_spec",
    "select_profiles",
    "source_date_epoch",
]

_WHERE = {
    "BuildOptions": "bundler.build",
    "BuiltBundle": "bundler.build",
    "build_bundles": "bundler.build",
    "select_profiles": "bundler.build",
    "source_date_epoch": "bundler.build",
    "Spec": "bundler.spec",
    "load_spec": "bundler.spec",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bundler' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
