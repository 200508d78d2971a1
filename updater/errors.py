"""Sealift's errors, split by who is at fault.

Every error carries a one-line message that names its subject, what was expected and what was
found. The CLIs print ``diagnostics()`` once and exit non-zero; library exceptions (yaml, docker,
oras, tuf, OSError) are wrapped with context before they leave a public function. The build side
(``bundler.errors``) adds its own families on the same base.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ClockError",
    "ContentMismatch",
    "DeliveryError",
    "DeviceFault",
    "IncompleteMedium",
    "SealiftError",
    "SecretError",
    "SpecError",
    "TrustError",
    "UpdaterError",
]


class SealiftError(Exception):
    """Base of every error Sealift raises on purpose."""

    def diagnostics(self) -> str:
        """The text the CLI shows: one line naming the cause."""
        return str(self)


class SpecError(SealiftError):
    """A spec or profile file is missing, malformed or inconsistent (the user's input)."""


class BundleError(SealiftError):
    """A bundle is malformed, tampered with, truncated or incomplete."""


class DeliveryError(SealiftError):
    """A registry, mirror or medium cannot deliver: unreachable, refused, incomplete or not matching."""


class ContentMismatch(DeliveryError):
    """Bytes that are not what their digest or size says: refused, and nothing of them kept."""


class IncompleteMedium(DeliveryError):
    """A medium lacks what the device needs and does not have: a delta's base, or a blob."""


class SecretError(SealiftError):
    """A secret cannot be sealed or opened: no value, no recipient, a wrong key, a tampered or moved
    ciphertext. Messages name the secret, never its value."""


class UpdaterError(SealiftError):
    """Base of the errors raised by the device side."""


class TrustError(UpdaterError):
    """A bundle or its metadata fails the trust check, or the device's trust state is unusable."""


class DeviceFault(TrustError):
    """The device's own trust state, disk or clock is at fault, not the bundle: fixed on the device."""


class ClockError(DeviceFault):
    """The device's clock reads earlier than a time it already trusted: fixed by fixing the clock."""
