"""``sealift-updater install``: an A/B update with health checks and automatic rollback.

(1) verify (TUF, every blob, the profile); (2) stage into the inactive slot; (3) load the
images; (4) record ``trying`` durably; (5) stop the running release and start the new one;
(6) run the health checks; (7) commit, or roll back: stop the new release, start the previous
one, and record why, marking the new release as failed so it is not retried unless forced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.appdef import App, HealthPolicy, parse_app, parse_health
from bundler.profiles import Profile
from bundler.yamlfile import Field
from updater.errors import UpdaterError
from updater.health import HealthResult, wait_healthy
from updater.images import load_images
from updater.runtime import Runtime
from updater.slots import DeviceState, Phase, Release, Slots
from updater.stage import stage_release
from updater.trust import TrustStore
from updater.verify import verify_for_device

__all__ = ["Installer", "Outcome"]

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Outcome:
    committed: bool
    release: Release
    reason: str


class Installer:
    """Installs releases on one device: its state directory, its trust, its engine."""

    def __init__(self, *, state_dir: Path, client: Any, profile: Profile | None, log: Log = lambda _: None) -> None:
        self.slots = Slots(state_dir)
        self.trust = TrustStore(state_dir)
        self.runtime = Runtime(client)
        self.client = client
        self.profile = profile
        self.log = log

    def install(self, bundle: Path, *, force: bool = False) -> Outcome:
        with self.slots.locked():
            state = self.slots.load()
            self.log(f"[1/7] verify {bundle}")
            info = verify_for_device(bundle, trust=self.trust, profile=self.profile)
            if info.digest in state.failed and not force:
                raise UpdaterError(f"{info.name} {info.version} failed its health checks before; use --force to try it again")
            if state.current is not None and state.current.digest == info.digest:
                return Outcome(committed=True, release=state.current, reason="already running")
            release = Release(name=info.name, version=info.version, profile=info.profile, digest=info.digest,
                              slot=state.inactive_slot())
            slot_dir = self.slots.slot_dir(release.slot)
            self.log(f"[2/7] stage into slot {release.slot}")
            stage_release(bundle, info, slot_dir)
            self.log("[3/7] load images")
            images = load_images(self.client, bundle, info)
            self.log("[4/7] record trying")
            state = state.with_event(phase=Phase.TRYING, candidate=release, reason="")
            self.slots.save(state)
            self.log(f"[5/7] switch to {release.name} {release.version} in slot {release.slot}")
            app, policy = _release_definition(info.descriptor, str(slot_dir))
            if state.current is not None:
                self.runtime.stop(state.current.name, state.current.slot)
            self.runtime.stop(release.name, release.slot)  # leftovers of an earlier try
            self.runtime.start(release, app, slot_dir, images)
            self.log("[6/7] health checks")
            result = wait_healthy(lambda: self.runtime.containers(release.name, release.slot), policy, slot_dir)
            if result.ok:
                self.log("[7/7] commit")
                self.slots.save(state.with_event(phase=Phase.COMMITTED, current=release, candidate=None, reason="healthy"))
                return Outcome(committed=True, release=release, reason="healthy")
            self.log(f"[7/7] roll back: {result.check} failed: {result.detail}")
            return self._roll_back(state, release, result)

    def _roll_back(self, state: DeviceState, failed: Release, result: HealthResult) -> Outcome:
        reason = f"{result.check} failed: {result.detail}"
        state = state.with_event(phase=Phase.ROLLING_BACK, reason=reason)
        self.slots.save(state)
        self.runtime.stop(failed.name, failed.slot)
        previous = state.current
        if previous is not None:
            slot_dir = self.slots.slot_dir(previous.slot)
            descriptor = _descriptor(slot_dir)
            app, policy = _release_definition(descriptor, str(slot_dir))
            images = {i["name"]: i["config"] for i in descriptor["images"]}
            self.runtime.start(previous, app, slot_dir, images)
            back = wait_healthy(lambda: self.runtime.containers(previous.name, previous.slot), policy, slot_dir)
            if not back.ok:
                reason += f"; the previous release is not healthy either ({back.check}: {back.detail})"
        self.slots.save(state.with_event(phase=Phase.ROLLED_BACK, candidate=None, reason=reason,
                                         failed=(*state.failed, failed.digest)))
        return Outcome(committed=False, release=failed, reason=reason)


def _descriptor(slot_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((slot_dir / "descriptor.json").read_text())
    return data


def _release_definition(descriptor: dict[str, Any], where: str) -> tuple[App, HealthPolicy]:
    configs = tuple(c["name"] for c in descriptor["configs"])
    mountable = (*(m["name"] for m in descriptor["models"]), *configs)
    app = parse_app(Field(Path(where), "app", descriptor["app"]), images=tuple(i["name"] for i in descriptor["images"]),
                    mountable=mountable, secrets=tuple(s["name"] for s in descriptor["secrets"]))
    return app, parse_health(Field(Path(where), "health", descriptor["health"]), app=app, configs=configs)
