"""Sealift's errors, one family per fault, each with its own exit code.

Who is at fault decides what to do next: fix the input, reject the artifact for good, try the
delivery again, repair the machine, look at the engine, or look at the release. Every error
carries a one-line message that names its subject, what was expected and what was found; the
CLIs of both sides print ``diagnostics()`` once and exit with the family's code (the table is in
docs/errors.md). Library exceptions (yaml, docker, oras, tuf, OSError) are wrapped with context
before they leave a public function. A subclass exists only where a caller branches on it.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "FAMILIES",
    "Conflict",
    "ContentMismatch",
    "Deferred",
    "DeliveryError",
    "DeviceFault",
    "EngineFault",
    "InputError",
    "Refused",
    "SealiftError",
    "Unhealthy",
]


class SealiftError(Exception):
    """Base of every error Sealift raises on purpose."""

    exit_code: ClassVar[int] = 1
    fault: ClassVar[str] = "error"

    def diagnostics(self) -> str:
        """The text the CLI shows: one line naming the cause."""
        return str(self)


class Conflict(SealiftError):
    """What was asked conflicts with what the machine holds now: another updater is installing,
    there is nothing to roll back to, the release failed before, the device is provisioned or
    enrolled already. Nothing was changed; ``--force`` overrides where it says so."""

    exit_code = 1
    fault = "conflict"


class InputError(SealiftError):
    """The command's input is wrong: a spec, profile, site or inventory file, a key, a reference
    or an option value. Nothing was changed; fix it and run again."""

    exit_code = 2
    fault = "input"


class Refused(SealiftError):
    """An attack or a bad artifact: a signature, threshold, expiry or rollback check failed;
    content is tampered with, truncated or malformed; or it is for another profile, site or
    device. The same bytes will be refused again."""

    exit_code = 3
    fault = "refused"


class ContentMismatch(Refused):
    """Bytes that are not what their digest or size says: nothing of them is kept."""


class DeliveryError(SealiftError):
    """A registry, mirror or medium cannot deliver: unreachable, timed out, not found, cut off.
    Nothing was changed; a later try may succeed (an interrupted download resumes)."""

    exit_code = 4
    fault = "delivery"


class DeviceFault(SealiftError):
    """The machine's own disk, state or clock: full, read-only, damaged, not provisioned or
    enrolled, a clock behind a time it trusted. Fixed on the machine."""

    exit_code = 5
    fault = "device"


class EngineFault(SealiftError):
    """The container engine: unreachable, or it refused to load an image or to create, start or
    stop a container."""

    exit_code = 6
    fault = "engine"


class Unhealthy(SealiftError):
    """The release started but failed its health checks; the previous release was restored."""

    exit_code = 7
    fault = "unhealthy"


class Deferred(SealiftError):
    """The release is signed and sound, but its staged rollout holds it on this device now: its wave
    has not started, the site's maintenance window is closed, or the rollout is paused or halted.
    Nothing was changed; the updater installs it when the rollout lets it."""

    exit_code = 8
    fault = "deferred"


FAMILIES: dict[str, type[SealiftError]] = {family.fault: family for family in (
    SealiftError, Conflict, InputError, Refused, DeliveryError, DeviceFault, EngineFault, Unhealthy, Deferred)}
"""Each fault family by the name ``status``, logs and JSON give it."""
