"""A thousand simulated devices (real device states, no engine; scripts/rollout_sim.py) through a
three-wave rollout whose canary fails: only the canaries install, their reports halt the rollout,
no other device installs after the halt, and the canaries that kept the release are told to go back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from scripts.rollout_sim import APP, SimulatedFleet, timing
from updater.rollout import Plan, Wave


def test_a_failing_canary_halts_a_thousand_device_rollout_before_any_other_device_installs(tmp_path: Path) -> None:
    fleet = SimulatedFleet(tmp_path, devices=1000, sites=10, versions=("1.1.0",))
    canaries = [d for d in fleet.devices if d.site == "plant-09"][:10]
    early = {d.id for d in fleet.devices if d.site in ("plant-00", "plant-01")}
    fleet.rollouts.start(Plan(app=APP, version="1.1.0", failure_threshold=20.0, changed=dt.datetime.now(dt.UTC).replace(microsecond=0),
                              waves=(Wave(name="canary", devices=frozenset(d.id for d in canaries)),
                                     Wave(name="early", sites=frozenset({"plant-00", "plant-01"})), Wave(name="rest", upto=10_000))))
    fleet.publish()

    first = fleet.poll_all("1.1.0")
    assert {p.device for p in first if p.decision.install} == {d.id for d in canaries}
    waits = {p.device: p.decision.reason for p in first if not p.decision.install}
    assert all("wave early (2 of 3)" in waits[d] for d in early) and len(early) == 200
    assert sum("wave rest (3 of 3)" in reason for reason in waits.values()) == 790
    for n, device in enumerate(canaries):  # six of the ten canaries fail their health checks
        fleet.install(device, "1.1.0", healthy=n < 4)
    fleet.report()
    plan = fleet.rollouts.get(APP, "1.1.0")
    assert [(w.name, len(w.devices["updated"]), len(w.devices["failed"]), len(w.devices["waiting"]), len(w.devices["unheard"]))
            for w in fleet.status(plan)] == [("canary", 4, 6, 0, 0), ("early", 0, 0, 200, 0), ("rest", 0, 0, 790, 0)]
    assert fleet.check("1.1.0") == "wave canary: 6 of 10 devices that tried demo 1.1.0 failed (60%, threshold 20%)"

    after = fleet.poll_all("1.1.0")
    assert not any(p.decision.install for p in after)
    assert all("the rollout of demo 1.1.0 is halted: wave canary: 6 of 10" in p.decision.reason for p in after)
    assert {p.device for p in after if p.recalled} == {d.id for d in canaries[:4]}
    # what a poll costs and fetches: the whole chain once, then the changed roles (timestamp, snapshot, plan)
    assert timing(first)["fetched_bytes"] > timing(after)["fetched_bytes"] > 0
