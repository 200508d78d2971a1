"""The updater's errors. Bundle faults are the bundler's :class:`~bundler.errors.BundleError`."""

from __future__ import annotations

from bundler.errors import SealiftError

__all__ = ["ClockError", "DeviceFault", "TrustError", "UpdaterError"]


class UpdaterError(SealiftError):
    """Base of the errors raised by the device side."""


class TrustError(UpdaterError):
    """A bundle or its metadata fails the trust check, or the device's trust state is unusable."""


class DeviceFault(TrustError):
    """The device's own trust state, disk or clock is at fault, not the bundle: fixed on the device."""


class ClockError(DeviceFault):
    """The device's clock reads earlier than a time it already trusted: fixed by fixing the clock."""
