"""The build side's errors, on the device side's base (:mod:`updater.errors`)."""

from __future__ import annotations

from updater.errors import SealiftError

__all__ = ["OutputError", "RepositoryError", "SigningError", "SourceError"]


class SourceError(SealiftError):
    """An image, model or config source cannot be read or resolved."""


class OutputError(SealiftError):
    """A bundle cannot be written: the disk is full, the target exists and differs, or similar."""


class SigningError(SealiftError):
    """A signing key is missing, locked, or not one the repository trusts for the role."""


class RepositoryError(SealiftError):
    """The TUF repository refuses a change: an older version, a damaged or unsigned metadata file."""
