"""The device's side of a staged rollout: whether a signed release may go in now, and whether a
running one must go back.

The plan of a release is looked up in the very TUF metadata that verified the release (a bundle's
or a medium's, a registry's, or the device's own), so a release and its plan are checked as one
moment of the repository; :func:`updater.rollout.decide` then says, offline, whether this device
may install it now. A release held back raises :class:`~updater.errors.Deferred`, whose message
``status``, the log and the reports carry. A plan that is halted with ``rollback`` sends a device
that runs its release back to the previous one (:meth:`Gate.follow`), once per pass of the service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from updater.errors import Deferred, Refused, SealiftError
from updater.oci import canonical_json
from updater.plan import Candidate, failure_key
from updater.rollout import ROLE, Decision, Plan, State, decide, plan_target
from updater.slots import DeviceState, Release
from updater.tuf_client import TrustedMetadata, TufClient
from updater.versions import version_key

if TYPE_CHECKING:
    from updater.install import Installer, Outcome

__all__ = ["Gate", "signed_plan"]


def signed_plan(client: TufClient, app: str, version: str) -> Plan | None:
    """The plan the refreshed ``client`` signs for ``app`` ``version`` (None: the release is not staged);
    Refused when what is signed is not a plan of that release."""
    name = plan_target(app, version)
    target = client.target(name)  # the repository's answer, every delegation walked in order
    if target is None:
        return None
    where = f"the signed rollout plan {name}"
    if target != client.role_target(ROLE, name):  # a plan counts only as the rollout role signs it
        raise Refused(f"{where}: signed by a role other than the rollout role")
    custom = target.custom.get("sealift") if isinstance(target.custom, dict) else None
    raw = custom.get("plan") if isinstance(custom, dict) else None
    data = canonical_json(raw)
    if target.length != len(data) or target.hashes.get("sha256") != hashlib.sha256(data).hexdigest():
        raise Refused(f"{where}: its content is not what its hashes sign")
    plan = Plan.from_json(raw, Refused, where, zones=False)  # the device's own site's zone is resolved when it decides
    if (plan.app, plan.version) != (app, version):
        raise Refused(f"{where}: holds the plan of {plan.app} {plan.version}")
    return plan


class Gate:
    """Rollout decisions for the device ``installer`` serves."""

    def __init__(self, installer: Installer) -> None:
        self.installer = installer

    def decision(self, client: TufClient, app: str, version: str, *, ignore_window: bool = False) -> Decision:
        """What the plan of ``app`` ``version`` in ``client``'s metadata says to this device now."""
        plan = signed_plan(client, app, version)
        if plan is None:
            return Decision(install=True)
        identity, trust = self.installer.identity, self.installer.trust
        record = identity.record() if identity.enrolled() else {}
        device, site = record.get("device"), record.get("site")
        return decide(plan, device=device if isinstance(device, str) else None, site=site if isinstance(site, str) else None,
                      now=trust.now(), trusted_time=trust.trusted_time(), ignore_window=ignore_window)

    def check(self, client: TufClient, app: str, version: str, *, ignore_window: bool = False) -> Decision:
        """Deferred when this device may not install ``app`` ``version`` now; the decision otherwise. An
        install outside the site's maintenance window (``ignore_window``: only the operator at the
        device asks for it) is journaled."""
        decision = self.decision(client, app, version, ignore_window=ignore_window)
        if not decision.install:
            raise Deferred(f"{app} {version} waits: {decision.reason}")
        if ignore_window and not self.decision(client, app, version).install:
            self.installer.log(f"warning: {app} {version} goes in outside the site's maintenance window, as asked")
            self.installer.journal.record("window-overridden", app=app, version=version, wave=decision.wave or "")
        return decision

    def holding(self, release: Candidate | None, *, ignore_window: bool = False) -> Callable[[TufClient], None]:
        """A check that raises Deferred when the rollout holds ``release`` (as an arrival's index claims it,
        before anything of it is copied: the install checks the release it verifies again)."""
        def hold(client: TufClient) -> None:
            if release is not None and not (d := self.decision(client, release.name, release.version,
                                                               ignore_window=ignore_window)).install:
                raise Deferred(f"{release.name} {release.version} waits: {d.reason}")

        return hold

    def follow(self) -> list[Outcome | SealiftError]:
        """Send back each application whose running release a halted plan with ``rollback`` recalls,
        by the device's trusted metadata (what the last poll or medium brought); what each return did."""
        installer = self.installer
        states = {name: state for name, state in installer.apps.states().items()
                  if state.current is not None and state.previous is not None}  # only these can go back
        if not states or not installer.trust.provisioned():
            return []
        recalled = []
        with installer.trust.candidate() as metadata_dir:
            client = TufClient(metadata_dir, TrustedMetadata(metadata_dir))
            client.refresh()
            for name, state in states.items():
                current, previous = state.current, state.previous
                assert current is not None and previous is not None
                plan = signed_plan(client, name, current.version)
                if plan is not None and _recalls(plan) and _may_return_to(client, state, previous):
                    recalled.append((name, f"the rollout of {name} {current.version} was halted"
                                           + (f": {plan.reason}" if plan.reason else "")))
        done: list[Outcome | SealiftError] = []
        for name, why in recalled:
            try:
                done.append(installer.rollback(name, reason=why))
            except SealiftError as e:
                done.append(e)
        return done


def _recalls(plan: Plan | None) -> bool:
    """Whether ``plan`` sends the devices that run its release back."""
    return plan is not None and plan.state is State.HALTED and plan.rollback


def _may_return_to(client: TufClient, state: DeviceState, previous: Release) -> bool:
    """Whether a recall may return to ``previous``: an older release (never forward), not one that failed
    here, and not one a halt recalls too (two halted releases would send the device back and forth)."""
    current = state.current
    assert current is not None
    return version_key(previous.version) < version_key(current.version) and failure_key(previous) not in state.failed \
        and not _recalls(signed_plan(client, previous.name, previous.version))
