"""The one place the device decides whether a bundle may be installed.

Today: structure, every blob's digest and size, and that the bundle was built for this device's
hardware profile and compatible string. Signature checks (TUF) join here, before anything else.
"""

from __future__ import annotations

from pathlib import Path

from bundler.bundle import BundleInfo, verify_bundle
from bundler.errors import BundleError
from bundler.profiles import Profile

__all__ = ["verify_for_device"]


def verify_for_device(path: Path, *, profile: Profile | None) -> BundleInfo:
    """Check ``path`` completely; with ``profile``, refuse a bundle built for other hardware."""
    # (1) every byte: structure, digests, sizes, content digests of compressed layers
    info = verify_bundle(path)
    # (2) the bundle is for this hardware
    if profile is not None:
        if info.profile != profile.name:
            raise BundleError(f"{path}: bundle {info.name} {info.version} is for profile {info.profile}, this device is {profile.name}")
        if info.compatible != profile.compatible:
            raise BundleError(
                f"{path}: bundle {info.name} {info.version} is compatible with {info.compatible!r}, "
                f"this device needs {profile.compatible!r}"
            )
    return info
