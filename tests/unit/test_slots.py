from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from updater.errors import Conflict, DeviceFault
from updater.slots import DeviceState, Phase, Release, Slots

RELEASE = Release(name="vision-app", version="1.2.0", profile="x86_64-cpu", digest="sha256:" + "a" * 64, slot="a")


def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    assert slots.load() == DeviceState()
    state = DeviceState().with_event(phase=Phase.TRYING, candidate=RELEASE, reason="installing")
    state = state.with_event(phase=Phase.COMMITTED, current=RELEASE, candidate=None, reason="healthy")
    slots.save(state)
    assert slots.load() == state
    assert [e["phase"] for e in slots.load().history] == ["trying", "committed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600


def test_the_inactive_slot_is_never_the_current_one() -> None:
    assert DeviceState().inactive_slot() == "a"
    assert DeviceState(current=RELEASE).inactive_slot() == "b"
    assert DeviceState(current=Release(**{**vars(RELEASE), "slot": "b"})).inactive_slot() == "a"


def test_history_is_bounded() -> None:
    state = DeviceState()
    for i in range(120):
        state = state.with_event(phase=Phase.IDLE, reason=str(i))
    assert len(state.history) == 50 and state.history[-1]["reason"] == "119"


def test_damaged_state_file_is_an_error_not_a_guess(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"phase": "dancing"}))
    with pytest.raises(DeviceFault, match="damaged state file"):
        Slots(tmp_path).load()


def test_a_second_updater_is_refused_at_once(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with slots.locked():
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    try:
        with pytest.raises(Conflict, match="another sealift-updater is installing"), Slots(tmp_path).locked():
            pass
    finally:
        release.set()
        holder.join()
    with Slots(tmp_path).locked():
        pass
