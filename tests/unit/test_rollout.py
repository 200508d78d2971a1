"""The rollout plan and the device's decision (updater.rollout), maintenance windows (updater.windows),
and plan files resolved against the inventory (bundler.rollout): waves by ID, site, label and
stable percentage; a clock that never starts a wave early; windows in the site's local time; every
bad plan refused with one line."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bundler.devices import Inventory
from bundler.rollout import read_plan_file
from tests.envelope import result_of
from updater.errors import InputError, Refused
from updater.rollout import Plan, State, Wave, bucket, decide
from updater.windows import Maintenance

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)  # a Tuesday
A, B, C = (f"dev-{c * 32}" for c in "abc")


def plan(*waves: Wave, **fields: Any) -> Plan:
    return Plan(app="demo", version="1.1.0", waves=waves, changed=T0, **fields)


def wave(name: str, **fields: Any) -> Wave:
    return Wave(name=name, **{k: frozenset(v) if k in ("devices", "sites") else v for k, v in fields.items()})


# --- maintenance windows ---------------------------------------------------------------------------


def berlin(*windows: str) -> Maintenance:
    return Maintenance.from_json({"timezone": "Europe/Berlin", "windows": list(windows)}, InputError, "site plant-a")


@pytest.mark.parametrize(("window", "utc", "open_"), [
    ("Sat 02:00-06:00", "2026-12-05T01:30", True),  # 02:30 in Berlin (UTC+1)
    ("Sat 02:00-06:00", "2026-12-05T05:00", False),  # 06:00 local: the end is not inside
    ("Sat 02:00-06:00", "2026-12-05T00:30", False),  # 01:30 local
    ("Fri 22:00-04:00", "2026-12-05T02:00", True),  # Saturday 03:00 local: Friday's window, past midnight
    ("Fri 22:00-04:00", "2026-12-06T02:00", False),  # Sunday 03:00: Saturday has no window
    ("Mon-Fri 09:00-17:00", "2026-12-04T15:59", True),
    ("Sat,Sun 00:00-24:00", "2026-12-06T22:59", True),  # Sunday 23:59 local
    ("Sat 02:00-06:00", "2026-07-04T00:30", True),  # summer: 02:30 local is 00:30 UTC (UTC+2)
    ("daily 01:00-02:00", "2026-12-02T00:15", True),
], ids=["inside", "at-the-end", "before", "past-midnight", "not-the-next-night", "range", "whole-weekend", "summer-time", "daily"])
def test_a_window_is_open_in_the_sites_local_time(window: str, utc: str, open_: bool) -> None:
    assert berlin(window).is_open(dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC)) is open_


def test_the_next_window_opening_is_found_and_a_skipped_hour_never_opens() -> None:
    assert berlin("Sat 02:00-06:00").opens(T0) == dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)
    # 2027-03-28: Berlin's clocks jump from 02:00 to 03:00; the window inside the skipped hour does not open that day
    before = dt.datetime(2027, 3, 27, 12, 0, tzinfo=dt.UTC)
    assert berlin("Sun 02:15-02:45").opens(before) == dt.datetime(2027, 4, 4, 0, 15, tzinfo=dt.UTC)
    assert str(berlin("Sat,Sun 01:00-03:00")) == "Sat,Sun 01:00-03:00 (Europe/Berlin)"


@pytest.mark.parametrize(("data", "message"), [
    ({"timezone": "Mars/Olympus_Mons", "windows": ["Sat 02:00-06:00"]}, "unknown time zone 'Mars/Olympus_Mons'"),
    ({"timezone": "../../etc/passwd", "windows": ["Sat 02:00-06:00"]}, "unknown time zone"),
    ({"timezone": "Europe/Berlin", "windows": ["Funday 02:00-03:00"]}, "'funday' is not a day"),
    ({"timezone": "Europe/Berlin", "windows": ["Sat 25:00-26:00"]}, "25:00 is not a time of day"),
    ({"timezone": "Europe/Berlin", "windows": ["Sat 02:00-02:00"]}, "is empty"),
    ({"timezone": "Europe/Berlin", "windows": ["at night"]}, "is not a window"),
    ({"timezone": "Europe/Berlin", "windows": []}, "expected 1 to 32 windows"),
    ({"timezone": "Europe/Berlin"}, "expected a timezone and a list of windows"),
], ids=["unknown-zone", "path-as-zone", "bad-day", "bad-hour", "empty", "not-a-window", "none", "missing"])
def test_a_bad_window_is_refused_with_one_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        Maintenance.from_json(data, InputError, "site plant-a")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("site plant-a: ")


# --- waves -----------------------------------------------------------------------------------------


def test_a_device_belongs_to_the_first_wave_naming_it_then_to_its_percentage_bucket() -> None:
    p = plan(wave("canary", devices={A}), wave("plant", sites={"plant-a"}), wave("tenth", upto=1000), wave("rest", upto=10_000))
    assert p.wave_of(A, "plant-a") == 0  # named by ID, though its site is in a later wave
    assert p.wave_of(B, "plant-a") == 1
    assert p.wave_of(None, None) == 3  # not enrolled: the last wave
    ids = [f"dev-{i:032x}" for i in range(2000)]
    waves = [p.wave_of(d, "elsewhere") for d in ids]
    assert 150 <= waves.count(2) <= 250 and waves.count(2) + waves.count(3) == 2000  # about 10 %, the rest in the last
    assert [p.wave_of(d, "elsewhere") for d in ids] == waves  # stable: the same wave at every poll
    assert bucket("demo", "1.1.0", A) != bucket("demo", "1.2.0", A) or bucket("demo", "1.1.0", B) != bucket("demo", "1.2.0", B)


def test_a_device_outside_every_wave_waits_and_says_so() -> None:
    p = plan(wave("canary", devices={A}))
    decision = decide(p, device=B, site="plant-b", now=T0, trusted_time=None)
    assert not decision.install and decision.reason == "this device is in no wave of the rollout of demo 1.1.0"


def test_only_open_waves_install_and_a_clock_behind_never_starts_a_wave_early() -> None:
    later = T0 + dt.timedelta(hours=6)
    p = plan(wave("canary", devices={A}, not_before=later), wave("rest", upto=10_000), opened=1)
    assert decide(p, device=A, site="s", now=later, trusted_time=None).install
    early = decide(p, device=A, site="s", now=later - dt.timedelta(minutes=1), trusted_time=None)
    assert not early.install and early.until == later and "starts at 2026-12-01T18:00:00Z" in early.reason
    # a clock that reads 1970 (a flat RTC battery): the plan's own signing time stands in, and it is before the start
    assert not decide(p, device=A, site="s", now=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), trusted_time=None).install
    # a clock behind a time the device already trusted: that time stands in (the true time is not earlier)
    assert decide(p, device=A, site="s", now=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), trusted_time=later).install
    closed = decide(p, device=B, site="s", now=later, trusted_time=None)
    assert not closed.install and closed.wave == "rest" and "wave rest (2 of 2) of the rollout of demo 1.1.0 has not started" \
        in closed.reason
    assert decide(replace(p, opened=2), device=B, site="s", now=later, trusted_time=None).install


def test_a_closed_window_defers_until_it_opens_unless_the_operator_overrides_it() -> None:
    p = plan(wave("all", upto=10_000), windows={"plant-a": berlin("Sat 02:00-06:00")})
    held = decide(p, device=A, site="plant-a", now=T0, trusted_time=None)
    assert not held.install and held.until == dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)
    assert held.reason == ("outside site plant-a's maintenance window Sat 02:00-06:00 (Europe/Berlin); "
                           "it opens at 2026-12-05T01:00:00Z")
    assert decide(p, device=A, site="plant-a", now=held.until, trusted_time=None).install
    assert decide(p, device=A, site="plant-a", now=T0, trusted_time=None, ignore_window=True).install
    assert decide(p, device=A, site="plant-b", now=T0, trusted_time=None).install  # a site without windows


def test_a_paused_or_halted_rollout_holds_every_device() -> None:
    p = plan(wave("all", upto=10_000))
    paused = decide(replace(p, state=State.PAUSED, reason="latency up"), device=A, site="s", now=T0, trusted_time=None)
    assert not paused.install and paused.reason == "the rollout of demo 1.1.0 is paused: latency up"
    halted = decide(replace(p, state=State.HALTED), device=A, site="s", now=T0, trusted_time=None)
    assert not halted.install and halted.reason == "the rollout of demo 1.1.0 is halted"


# --- the plan as signed ----------------------------------------------------------------------------


def test_a_plan_reads_back_exactly_as_it_was_written() -> None:
    p = plan(wave("canary", devices={A, B}), wave("plant", sites={"plant-a"}, not_before=T0), wave("rest", upto=5025),
             failure_threshold=12.5, windows={"plant-a": berlin("Mon-Fri 22:00-04:00")}, opened=2)
    again = Plan.from_json(json.loads(p.canonical()), Refused, "plan")
    assert again == p and again.canonical() == p.canonical()


def _json(**changes: Any) -> dict[str, Any]:
    data = plan(wave("canary", devices={A}), wave("rest", upto=10_000)).to_json()
    for key, value in changes.items():
        if key.startswith("wave_"):
            data["waves"][1][key.removeprefix("wave_")] = value
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(("data", "message"), [
    (_json(waves=[{"name": "a", "devices": [A]}, {"name": "b", "devices": [A, B]}]), "waves a and b overlap: both name device"),
    (_json(waves=[{"name": "a", "sites": ["s"]}, {"name": "b", "sites": ["s"]}]), "waves a and b overlap: both name site s"),
    (_json(waves=[{"name": "a"}]), "wave a is empty"),
    (_json(wave_upto_bp=15_000), "upto_bp: expected a whole number of basis points from 0 to 10000"),
    (_json(wave_upto_bp=10**400), "upto_bp: expected a whole number of basis points"),
    (_json(failure_threshold_bp=10**400), "failure_threshold_bp: expected a whole number of basis points"),
    (_json(changed="0001-01-01T00:00:00+01:00"), "changed: expected a UTC time from 2000 to 2200"),
    (_json(changed="9999-12-31T23:59:59-01:00"), "changed: expected a UTC time from 2000 to 2200"),
    (_json(wave_not_before="9999-12-31T23:59:59Z"), "not_before: expected a UTC time from 2000 to 2200"),
    (_json(reason="line one\nline two"), "expected a number, a boolean and a line of text"),
    (_json(reason="\x1b[31mred"), "expected a number, a boolean and a line of text"),
    (_json(waves=[{"name": "a", "upto_bp": 5000}, {"name": "b", "upto_bp": 2000}]), "20.0% takes no device"),
    (_json(waves=[{"name": "a", "upto_bp": 5000}, {"name": "a", "upto_bp": 6000}]), "two waves are called a"),
    (_json(wave_upto_bp=50.5), "upto_bp: expected a whole number"),
    (_json(waves=[]), "expected 1 to 64 waves"),
    (_json(opened=3), "3 waves open, of 2"),
    (_json(failure_threshold_bp=12_000), "failure_threshold_bp: expected a whole number of basis points from 0 to 10000"),
    (_json(state="sleeping"), "state: expected one of running, paused, halted"),
    (_json(changed="yesterday"), "changed: expected a UTC time"),
    (_json(wave_not_before="2026-12-01T06:00:00"), "not_before: expected a UTC time"),
    (_json(windows={"plant-a": {"timezone": "Nowhere/Land", "windows": ["Sat 02:00-03:00"]}}), "unknown time zone"),
    (_json(extra=1), "not a rollout plan"),
    (_json(app="Demo App"), "app: 'Demo App' is not a valid app"),
    (_json(wave_devices=["../../etc"]), "devices: expected a list of names"),
], ids=["devices-overlap", "sites-overlap", "empty-wave", "over-100", "huge-share", "huge-threshold", "year-1", "year-9999",
        "start-9999", "two-lines", "escape", "not-rising", "same-name", "fraction", "no-waves", "opened",
        "threshold", "state", "changed", "naive-time", "unknown-zone", "unknown-field", "bad-app", "bad-device"])
def test_a_bad_plan_is_refused_with_one_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(Refused, match=message) as raised:
        Plan.from_json(data, Refused, "the signed plan demo/rollout/1.1.0")
    assert "\n" not in str(raised.value)


# --- plan files, resolved against the inventory ----------------------------------------------------


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    from updater.identity import DeviceIdentity

    inv = Inventory(tmp_path / "devices.yaml")
    for name, site in (("one", "plant-a"), ("two", "plant-a"), ("three", "plant-b")):
        record = DeviceIdentity(tmp_path / name).enroll(site=site, profile="x86_64-cpu")
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
        inv.add(tmp_path / f"{name}.json")
    return inv


def test_a_plan_file_resolves_labels_to_devices_and_carries_the_sites_windows(tmp_path: Path, inventory: Inventory) -> None:
    one, two, three = (d.device for d in inventory.devices())
    inventory.label(one, add={"ring": "canary"})
    inventory.set_window("plant-b", berlin("Sat 02:00-06:00"))
    (tmp_path / "plan.yaml").write_text(f"""
app: demo
version: 1.1.0
failure_threshold: 25%
waves:
  - name: canary
    labels: {{ring: canary}}
  - name: named
    devices: [{three}]
    not_before: 2026-12-04T06:00:00Z
  - name: rest
    percent: 100
""")
    p = read_plan_file(tmp_path / "plan.yaml", inventory, now=T0)
    assert p.waves[0].devices == {one} and p.waves[1].devices == {three} and p.waves[2].upto == 10_000
    assert p.failure_threshold == 25 and p.opened == 1 and p.state is State.RUNNING
    assert p.waves[1].not_before == dt.datetime(2026, 12, 4, 6, tzinfo=dt.UTC)
    assert set(p.windows) == {"plant-b"} and str(p.windows["plant-b"]) == "Sat 02:00-06:00 (Europe/Berlin)"
    assert p.wave_of(two, "plant-a") == 2
    # the inventory keeps labels and windows through later changes
    inventory.revoke(two)
    again = Inventory(inventory.path)
    assert next(d for d in again.devices() if d.device == one).labels == {"ring": "canary"} and set(again.sites()) == {"plant-b"}


@pytest.mark.parametrize(("waves", "message"), [
    ("  - {name: a, labels: {ring: nowhere}}", "ring=nowhere matches no enrolled device"),
    (f"  - {{name: a, devices: [{A}]}}", f"{A} is not an enrolled device"),
    ("  - {name: a, sites: [plant-z]}", "site plant-z has no enrolled device"),
    ("  - {name: a, sites: [plant-a]}\n  - {name: b, devices: [ONE]}", "waves b and plant-a overlap|waves b and a overlap"),
    ("  - {name: a, percent: 101}", "expected a percentage from 0 to 100"),
    ("  - {name: a, percent: 10.001}", "to a hundredth at most"),
    ("  - {name: a, not_before: tomorrow}", "expected a UTC time"),
    ("  - {name: a, not_before: '9999-12-31T23:59:59Z'}", "expected a time from 2000 to 2200"),  # what every device refuses
], ids=["label-matches-none", "unknown-device", "unknown-site", "device-in-a-site-wave", "over-100", "too-fine", "bad-time",
        "beyond-devices"])
def test_a_bad_plan_file_is_refused_naming_the_file(tmp_path: Path, inventory: Inventory, waves: str, message: str) -> None:
    one = inventory.devices()[0].device
    (tmp_path / "plan.yaml").write_text(f"app: demo\nversion: 1.1.0\nwaves:\n{waves.replace('ONE', one)}\n")
    with pytest.raises(InputError, match=message) as raised:
        read_plan_file(tmp_path / "plan.yaml", inventory, now=T0)
    assert str(tmp_path / "plan.yaml") in str(raised.value) and "\n" not in str(raised.value)


def test_the_inventory_commands_set_labels_and_windows_and_refuse_bad_ones_in_one_line(tmp_path: Path, inventory: Inventory) -> None:
    from click.testing import CliRunner

    from bundler.cli import cli

    one = inventory.devices()[0].device
    where = ["--inventory", str(inventory.path)]

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, [*args, *where])

    assert run("devices", "label", one, "ring=canary", "rack=4").exit_code == 0
    assert run("devices", "label", one, "--remove", "rack").exit_code == 0
    assert next(d for d in inventory.devices() if d.device == one).labels == {"ring": "canary"}
    bad_label = run("devices", "label", one, "ring")
    assert bad_label.exit_code == 2 and "expected KEY=VALUE" in bad_label.output
    unknown = run("devices", "label", "dev-" + "f" * 32, "ring=canary")
    assert unknown.exit_code == 2 and "no device dev-ffff" in unknown.stderr
    set_window = run("devices", "window", "plant-a", "--timezone", "Europe/Berlin", "--window", "Sat 02:00-06:00", "--json")
    assert set_window.exit_code == 0 and result_of(set_window.stdout)["maintenance"]["windows"] == ["Sat 02:00-06:00"]
    bad_zone = run("devices", "window", "plant-a", "--timezone", "Mars/Olympus", "--window", "Sat 02:00-06:00")
    assert bad_zone.exit_code == 2 and bad_zone.stderr.count("\n") == 1 and "unknown time zone 'Mars/Olympus'" in bad_zone.stderr
    assert str(inventory.sites()["plant-a"]) == "Sat 02:00-06:00 (Europe/Berlin)"  # the bad one changed nothing
    both = run("devices", "window", "plant-a", "--remove", "--window", "Sun 01:00-02:00")
    assert both.exit_code == 2 and "give it alone" in both.stderr and "plant-a" in inventory.sites()  # never a silent removal
    assert run("devices", "window", "plant-a", "--remove").exit_code == 0 and inventory.sites() == {}
    typo = CliRunner().invoke(cli, ["fleet", "import", "/media/usbb", "--inventory", str(inventory.path), "--db",
                                    str(tmp_path / "fleet.db")])
    assert typo.exit_code == 2 and "/media/usbb: no such directory" in typo.stderr


def test_several_records_enroll_in_one_change_or_not_at_all(tmp_path: Path, inventory: Inventory) -> None:
    from updater.identity import DeviceIdentity

    records = []
    for name in ("four", "five"):
        record = DeviceIdentity(tmp_path / name).enroll(site="plant-c", profile="x86_64-cpu")
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
        records.append(tmp_path / f"{name}.json")
    (tmp_path / "altered.json").write_text(json.dumps({**json.loads(records[0].read_text()), "device": "dev-" + "0" * 32}))
    with pytest.raises(InputError, match="the record was altered"):
        inventory.add_all([records[1], tmp_path / "altered.json"])
    assert len(inventory.devices()) == 3  # nothing of the batch was taken
    added = inventory.add_all(records)
    assert [d.site for d in added] == ["plant-c", "plant-c"] and len(inventory.devices()) == 5
    assert inventory.add_all(records) == added  # the same records again change nothing


def test_a_window_is_not_told_by_a_stand_in_clock_and_a_zone_unknown_here_holds_only_its_own_site() -> None:
    p = plan(wave("all", upto=10_000), windows={"plant-a": berlin("Sat 02:00-06:00")})
    behind = decide(p, device=A, site="plant-a", now=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), trusted_time=None)
    assert not behind.install and "this device's clock reads 1970-01-01T00:00:00Z, before 2026-12-01T12:00:00Z" in behind.reason
    assert "maintenance window cannot be told; set the clock" in behind.reason
    data = p.to_json()
    data["windows"]["plant-z"] = {"timezone": "Mars/Olympus_Mons", "windows": ["Sat 02:00-06:00"]}
    with pytest.raises(Refused, match="unknown time zone"):  # at the office, every zone must be known
        Plan.from_json(data, Refused, "plan")
    on_device = Plan.from_json(data, Refused, "plan", zones=False)  # a device resolves its own site's zone only
    assert decide(on_device, device=A, site="plant-a", now=dt.datetime(2026, 12, 5, 2, tzinfo=dt.UTC), trusted_time=None).install
    held = decide(on_device, device=A, site="plant-z", now=dt.datetime(2026, 12, 5, 2, tzinfo=dt.UTC), trusted_time=None)
    assert not held.install and held.reason == ("site plant-z's maintenance window is in time zone Mars/Olympus_Mons, which "
                                                "this device does not know (update its tzdata)")
    data["windows"]["plant-z"]["timezone"] = "../etc/passwd"
    with pytest.raises(Refused, match="is not a time zone name"):
        Plan.from_json(data, Refused, "plan", zones=False)


def test_a_device_not_enrolled_joins_only_a_last_wave_that_reaches_every_device() -> None:
    assert plan(wave("canary", devices={A}), wave("rest", upto=10_000)).wave_of(None, None) == 1
    assert plan(wave("canary", devices={A})).wave_of(None, None) is None
    assert plan(wave("canary", devices={A}), wave("half", upto=5000)).wave_of(None, None) is None


@pytest.mark.parametrize("percent", ["1.1", "2.3", "10.2", "99.99", "0.01", "100"])
def test_every_hundredth_of_a_percent_is_a_valid_share(tmp_path: Path, inventory: Inventory, percent: str) -> None:
    (tmp_path / "plan.yaml").write_text(f"app: demo\nversion: 1.1.0\nfailure_threshold: {percent}\n"
                                        f"waves:\n  - {{name: a, percent: {percent}}}\n")
    p = read_plan_file(tmp_path / "plan.yaml", inventory, now=T0)
    assert p.waves[0].upto == round(float(percent) * 100) and p.failure_threshold == float(percent)


def test_a_profile_may_not_take_a_name_plans_or_overlays_are_signed_under(tmp_path: Path) -> None:
    from updater.profiles import builtin_profile_dir, load_profiles

    text = (builtin_profile_dir() / "x86_64-cpu.yaml").read_text().replace("name: x86_64-cpu", "name: rollout")
    (tmp_path / "rollout.yaml").write_text(text)
    with pytest.raises(InputError, match="'rollout' is reserved"):
        load_profiles([tmp_path])
