"""Sealift's build side: bundle specs, and the signed OCI bundles built from them for each hardware profile.

What a bundle is, and the check both sides run on it, come from the device side (:mod:`updater`).
Names are imported when first used, so a command loads only what it needs.
"""

from __future__ import annotations

from updater.lazy import lazy_exports

_WHERE = {
    **dict.fromkeys(("BuildOptions", "BuiltBundle", "build_bundles", "select_profiles", "source_date_epoch"), "bundler.build"),
    **dict.fromkeys(("Spec", "load_spec"), "bundler.spec"),
    **dict.fromkeys(("Policy", "RolePolicy"), "bundler.policy"),
    "Repository": "bundler.repo",
    "check_path": "bundler.check",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
