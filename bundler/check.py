"""``sealift verify``: check bundles, overlays and media before they travel, with the device's own checks.

A bundle is checked completely (every blob, every compressed content, the descriptor against the
index); with a trusted root, its signed metadata is verified too, exactly as a device verifies it,
against a throwaway trust state. An overlay is checked the same way. A medium is checked end to
end: every file against its ``SHA256SUMS``, every bundle and overlay on it complete (a delta may
lack only what its base supplies), and with a trusted root each one's signature.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from updater.artifact import Artifact, Kind, open_artifact
from updater.bundle import check_bundle
from updater.errors import Refused, SealiftError
from updater.medium import MediumReport, check_medium, read_medium
from updater.overlay import check_overlay
from updater.progress import Progress, QuietProgress
from updater.tuf_client import carried_expiries

if TYPE_CHECKING:
    from updater.trust import TrustedState

__all__ = ["Checked", "check_path"]


@dataclass
class Checked:
    """What checking one path found: a line per problem (none when it is fine), and the fault of the first."""

    path: Path
    problems: list[str] = field(default_factory=list)
    fault: SealiftError | None = None
    digest: str | None = None
    medium: MediumReport | None = None
    overlay: dict[str, Any] | None = None
    expires: dict[str, str] = field(default_factory=dict)  # what its signed metadata says (unverified without --trusted-root)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        if self.medium is not None:
            data = self.medium.to_json()
        else:
            data = {"bundle": str(self.path), "digest": self.digest, "problems": self.problems,
                    **({"overlay": self.overlay} if self.overlay else {})}
        return {**data, **({"fault": self.fault.fault} if self.fault else {}), "metadata_expires": self.expires, "ok": self.ok}


def check_path(path: Path, *, trusted_root: Path | None, progress: Progress | None = None) -> Checked:
    """Check the bundle, overlay or medium at ``path``; every fault becomes a problem of the result."""
    checked = Checked(path=path)
    try:
        with open_artifact(path) as artifact:
            checked.expires = carried_expiries(artifact.reader)
            if artifact.kind is Kind.MEDIUM:
                _check_medium(artifact, checked, trusted_root, progress or QuietProgress())
            elif artifact.kind is Kind.OVERLAY:
                from updater.verify import check_signed_target  # TUF, when there is a root to check against

                overlay = check_overlay(artifact)
                checked.digest, checked.overlay = overlay.digest, overlay.to_json()
                if trusted_root is not None:
                    with _device(trusted_root) as trust:
                        check_signed_target(artifact.reader, overlay.digest, trust=trust)
            else:
                _check_bundle(artifact, checked, trusted_root)
    except SealiftError as e:
        checked.problems.append(e.diagnostics())
        checked.fault = checked.fault or e
    if checked.problems and checked.fault is None:
        checked.fault = Refused(checked.problems[0])
    return checked


def _check_bundle(artifact: Artifact, checked: Checked, trusted_root: Path | None) -> None:
    if trusted_root is None:
        report = check_bundle(artifact)  # every problem, not only the first
        checked.digest, checked.problems = report.bundle.digest, list(report.problems)
        return
    from updater.verify import verifying

    with _device(trusted_root) as trust, verifying(artifact, trust=trust, profile=None, hashed=False) as info:
        checked.digest = info.digest


def _check_medium(artifact: Artifact, checked: Checked, trusted_root: Path | None, progress: Progress) -> None:
    checked.medium = report = MediumReport(location=str(artifact.path))
    try:
        found = check_medium(artifact, progress=progress)
    except SealiftError as e:  # not even readable as a medium: truncated, or its manifest is damaged
        report.problems.append(e.diagnostics())
        checked.fault = e
    else:
        report.bundles, report.overlays, report.problems = found.bundles, found.overlays, found.problems
    if trusted_root is not None and not report.problems:
        report.problems += _medium_signatures(artifact, trusted_root)
    checked.problems = report.problems


def _medium_signatures(artifact: Artifact, root: Path) -> list[str]:
    """Each bundle and overlay of the medium is a signed target (checked with the medium's tuf/ folder)."""
    from updater.verify import check_signed_target

    contents = read_medium(artifact.reader, artifact.tops)
    entries = [(b.top.digest, f"{b.name} {b.version} ({b.profile})") for b in contents.bundles]
    entries += [(o.top.digest, f"{o.name} overlay {o.version} (site {o.site})") for o in contents.overlays]
    problems = []
    with _device(root) as trust:
        for digest, what in entries:
            try:
                check_signed_target(artifact.reader, digest, trust=trust)
            except SealiftError as e:
                problems.append(f"{what}: {e.diagnostics()}")
    return problems


@contextmanager
def _device(root: Path) -> Iterator[TrustedState]:
    """A throwaway trust state provisioned with ``root``: the device's checks, none of its state."""
    from updater.trust import TrustedState

    with tempfile.TemporaryDirectory(prefix="sealift-verify-") as state:
        trust = TrustedState(Path(state))
        trust.init(root)
        yield trust
