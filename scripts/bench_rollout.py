"""The rollout benchmark: ``--rollout-devices`` simulated devices (1,000 by default; scripts/rollout_sim.py)
through two staged rollouts of three waves each (a canary of 10 devices, two sites, then everyone).

- **a failing canary**: six of ten canaries fail; their reports halt the rollout (``rollout check``);
  a round of polls after the halt installs nothing and recalls the four canaries that kept it.
- **a good release**: the canaries install; the release manager opens each next wave once the
  reports show the open ones healthy; every device has the release after three waves.

Per round: how many devices installed, the median and 95th percentile of one poll (a refresh of
the device's TUF metadata from the mirror on a copy of its trusted state, then the decision) and
the median bytes a poll fetched; the floor beside a poll is the copy of the trusted state alone
(what any verification on the device starts with). Also: the decision alone (no metadata), the
size of the rollout role's metadata, and the office's steps (report import, check, sign).
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.rollout_sim import APP, SimulatedFleet, timing
from updater.rollout import Plan, Wave, decide


def _plan(fleet: SimulatedFleet, version: str) -> Plan:
    canaries = [d for d in fleet.devices if d.site == "plant-09"][:10]
    return Plan(app=APP, version=version, failure_threshold=20.0, changed=dt.datetime.now(dt.UTC).replace(microsecond=0),
                waves=(Wave(name="canary", devices=frozenset(d.id for d in canaries)),
                       Wave(name="early", sites=frozenset({"plant-00", "plant-01"})), Wave(name="rest", upto=10_000)))


def _round(fleet: SimulatedFleet, version: str, label: str, rounds: list[dict[str, Any]], *, failing: frozenset[str] = frozenset()) -> None:
    """One poll of every device; those the plan lets in install ``version`` (those in ``failing`` roll back)."""
    polls = fleet.poll_all(version)
    installed = [d for d, p in zip(fleet.devices, polls, strict=True) if p.decision.install and d.runs != version]
    for device in installed:
        fleet.install(device, version, healthy=device.id not in failing)
    for device, poll in zip(fleet.devices, polls, strict=True):
        if poll.recalled:
            fleet.go_back(device)
    rounds.append({"round": label, "installed": len(installed), "recalled": sum(p.recalled for p in polls), **timing(polls)})


def _floor(fleet: SimulatedFleet) -> float:
    """Median seconds to copy a device's trusted state (what every verification on a device starts with)."""
    times = []
    for device in fleet.devices[:200]:
        source = device.installer.trust.current.resolve()
        started = time.perf_counter()
        shutil.copytree(source, source.with_name("floor-copy"), symlinks=True)
        times.append(time.perf_counter() - started)
        shutil.rmtree(source.with_name("floor-copy"))
    return statistics.median(times)


def measure(*, devices: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sealift-bench-rollout-") as tmp:
        began = time.perf_counter()
        fleet = SimulatedFleet(Path(tmp), devices=devices, versions=("1.1.0", "1.2.0"))
        setup_s = time.perf_counter() - began
        rounds: list[dict[str, Any]] = []
        # (1) a failing canary: six of ten fail, the reports halt it, nobody else installs
        first = _plan(fleet, "1.1.0")
        fleet.rollouts.start(first)
        fleet.publish()
        _round(fleet, "1.1.0", "1.1.0 canary", rounds, failing=frozenset(sorted(first.waves[0].devices)[4:]))
        started = time.perf_counter()
        fleet.report()
        report_s = time.perf_counter() - started
        started = time.perf_counter()
        halted = fleet.check("1.1.0")
        check_s = time.perf_counter() - started
        assert halted is not None
        _round(fleet, "1.1.0", "1.1.0 after the halt", rounds)
        # (2) a good release through its three waves
        plan = _plan(fleet, "1.2.0")
        fleet.rollouts.start(plan)
        fleet.publish()
        _round(fleet, "1.2.0", "1.2.0 canary", rounds)
        for wave in ("early", "rest"):
            fleet.report()
            fleet.rollouts.advance(APP, "1.2.0", failing=lambda p: None if fleet.check("1.2.0") is None else "failing")
            fleet.publish()
            _round(fleet, "1.2.0", f"1.2.0 {wave}", rounds)
        assert all(d.runs == "1.2.0" for d in fleet.devices)
        current = fleet.rollouts.get(APP, "1.2.0")
        started = time.perf_counter()
        for device in fleet.devices:
            decide(current, device=device.id, site=device.site, now=dt.datetime.now(dt.UTC), trusted_time=None)
        decide_us = (time.perf_counter() - started) / len(fleet.devices) * 1e6
        rollout_files = sorted(fleet.mirror.glob("*.rollout.json"), key=lambda p: int(p.name.split(".")[0]))
        rollout_bytes = rollout_files[-1].stat().st_size
        floor_ms = _floor(fleet) * 1000
    steady = [r for r in rounds if r["round"] != "1.1.0 canary"]
    return {"devices": devices, "setup_s": round(setup_s, 1), "rounds": rounds, "halt_reason": halted,
            "poll_floor_ms": round(floor_ms, 2), "poll_ratio": round(statistics.median(r["median_ms"] for r in steady) / floor_ms, 1),
            "decide_us": round(decide_us, 1), "rollout_metadata_bytes": rollout_bytes,
            "report_import_s": round(report_s, 2), "check_s": round(check_s, 2)}


def print_report(figures: dict[str, Any]) -> None:
    print(f"staged rollouts over {figures['devices']} simulated devices (set up in {figures['setup_s']} s):")
    print(f"  {'round':24} {'installed':>9} {'recalled':>8} {'poll median':>12} {'p95':>8} {'fetched':>8}")
    for r in figures["rounds"]:
        print(f"  {r['round']:24} {r['installed']:>9} {r['recalled']:>8} {r['median_ms']:>9.2f} ms {r['p95_ms']:>5.2f} ms "
              f"{r['fetched_bytes']:>6} B")
    print(f"  floor (copy of the trusted state): {figures['poll_floor_ms']} ms; a poll is {figures['poll_ratio']}x it")
    print(f"  decision alone: {figures['decide_us']} us per device; rollout metadata: {figures['rollout_metadata_bytes']} bytes")
    print(f"  office: reports of every device imported in {figures['report_import_s']} s, check {figures['check_s']} s")
    print(f"  halted: {figures['halt_reason']}")
