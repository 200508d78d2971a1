"""Sealift's device side, and the core both sides share: read and check bundles, overlays and media,
verify them with TUF, and install them A/B on the container engine.

Names are imported when first used, so a command loads only what it needs.
"""

from __future__ import annotations

from updater import errors as _errors
from updater.lazy import lazy_exports

_WHERE = {
    **dict.fromkeys(_errors.__all__, "updater.errors"),
    **dict.fromkeys(("BundleInfo", "check_bundle", "verify_bundle"), "updater.bundle"),
    **dict.fromkeys(("Profile", "load_profiles"), "updater.profiles"),
    **dict.fromkeys(("Installer", "Outcome"), "updater.install"),
    "verify_for_device": "updater.verify",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
