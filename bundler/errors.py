"""Sealift's errors, split by who is at fault.

Every error carries a one-line message that names its subject, what was expected and what was
found. The CLI prints ``diagnostics()`` once and exits non-zero; library exceptions (yaml, docker,
oras, OSError) are wrapped with context before they leave a public function.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ContentMismatch",
    "DeliveryError",
    "IncompleteMedium",
    "OutputError",
    "RepositoryError",
    "SealiftError",
    "SecretError",
    "SigningError",
    "SourceError",
    "SpecError",
]


class SealiftError(Exception):
    """Base of every error Sealift raises on purpose."""

    def diagnostics(self) -> str:
        """The text the CLI shows: one line naming the cause."""
        return str(self)


class SpecError(SealiftError):
    """A spec or profile file is missing, malformed or inconsistent (the user's input)."""


class SourceError(SealiftError):
    """An image, model or config source cannot be read or resolved."""


class BundleError(SealiftError):
    """A bundle is malformed, tampered with, truncated or incomplete."""


class OutputError(SealiftError):
    """A bundle cannot be written: the disk is full, the target exists and differs, or similar."""


class SigningError(SealiftError):
    """A signing key is missing, locked, or not one the repository trusts for the role."""


class RepositoryError(SealiftError):
    """The TUF repository refuses a change: an older version, a damaged or unsigned metadata file."""


class DeliveryError(SealiftError):
    """A registry, mirror or medium cannot deliver: unreachable, refused, incomplete or not matching."""


class ContentMismatch(DeliveryError):
    """Bytes that are not what their digest or size says: refused, and nothing of them kept."""


class IncompleteMedium(DeliveryError):
    """A medium lacks what the device needs and does not have: a delta's base, or a blob."""


class SecretError(SealiftError):
    """A secret cannot be sealed or opened: no value, no recipient, a wrong key, a tampered or moved
    ciphertext. Messages name the secret, never its value."""
