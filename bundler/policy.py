"""The signing policy a repository is made with: its roles, how many keys each has and must sign, how
long their metadata stays valid, and the type of new keys. Plain values, so a command can offer
them as choices without loading TUF."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from updater.errors import InputError

__all__ = ["ALGORITHMS", "ROLES", "Policy", "RolePolicy"]

ROLES = ("root", "targets", "snapshot", "timestamp")
ALGORITHMS = ("ed25519", "ecdsa-p256")
_MAX_EXPIRY_DAYS = 36500.0


@dataclass(frozen=True, kw_only=True)
class RolePolicy:
    """How many keys a role has, how many must sign, and how long its metadata stays valid."""

    keys: int = 1
    threshold: int = 1
    expiry_days: float = 365.0


def _default_roles() -> dict[str, RolePolicy]:
    # Root rarely changes and its keys stay offline; timestamp is re-signed often. A site that is
    # offline for weeks needs bundles whose snapshot and timestamp outlive its absence: see
    # docs/security.md for the offline policy.
    return {
        "root": RolePolicy(expiry_days=365),
        "targets": RolePolicy(expiry_days=90),
        "snapshot": RolePolicy(expiry_days=30),
        "timestamp": RolePolicy(expiry_days=30),
    }


@dataclass(frozen=True, kw_only=True)
class Policy:
    roles: dict[str, RolePolicy] = field(default_factory=_default_roles)
    algorithm: str = "ed25519"

    def check(self) -> None:
        for role in ROLES:
            p = self.roles[role]
            if not 1 <= p.threshold <= p.keys:
                raise InputError(f"role {role}: threshold {p.threshold} needs 1 to {p.keys} keys")
            if not (math.isfinite(p.expiry_days) and 0 < p.expiry_days <= _MAX_EXPIRY_DAYS):
                raise InputError(f"role {role}: expiry must be over 0 and at most {_MAX_EXPIRY_DAYS:g} days, found {p.expiry_days}")
