"""The updater's errors. Bundle faults are the bundler's :class:`~bundler.errors.BundleError`."""

from __future__ import annotations

from bundler.errors import SealiftError

__all__ = ["UpdaterError"]


class UpdaterError(SealiftError):
    """Base of the errors raised by the device side."""
