"""Operator state from AMI device states into the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task

from agi_app.live.operators import DEVICE_STATES, OperatorTracker, operator_state
from agi_app.store import SQLiteStore

T0 = 1795640677.123


class FakeAMI:
    """The three members of the AMI service the tracker uses."""

    def __init__(self):
        self.device_states: dict[str, str] = {}
        self.subscribers: list[tuple[object, str | None]] = []
        self.connect_callbacks: list[object] = []

    def subscribe(self, callback, event_name=None):
        entry = (callback, event_name)
        self.subscribers.append(entry)
        return lambda: self.subscribers.remove(entry)

    def on_connect(self, callback):
        self.connect_callbacks.append(callback)
        return lambda: self.connect_callbacks.remove(callback)

    def emit(self, event: dict) -> None:
        for callback, name in list(self.subscribers):
            if name is None or name.lower() == event["Event"].lower():
                callback(event)

    def connected(self) -> list:
        return [cb(self) for cb in list(self.connect_callbacks)]


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def clock():
    c = task.Clock()
    c.advance(T0)
    return c


@pytest.fixture
def store(tmp_path: Path, clock):
    s = SQLiteStore(str(tmp_path / "s.sqlite3"), reactor=_reactor(), clock=clock)
    s.open()
    yield s
    pytest_twisted.blockon(s.close())


@pytest.fixture
def ami():
    return FakeAMI()


@pytest.fixture
def tracker(ami, store, clock):
    t = OperatorTracker(ami, store, clock, exclude=("pstn",))
    t.start()
    yield t
    t.stop()


def state_change(device: str, state: str) -> dict:
    return {"Event": "DeviceStateChange", "Device": device, "State": state}


@pytest.mark.parametrize("state, expected", sorted(DEVICE_STATES.items()))
def test_mapping(state, expected):
    assert operator_state("PJSIP/1000", state) == ("1000", expected)


@pytest.mark.parametrize(
    "device, state",
    [
        ("SIP/1000", "INUSE"),
        ("Local/1000@ctx", "INUSE"),
        ("PJSIP/10 00", "INUSE"),
        ("PJSIP/a/b", "INUSE"),
        ("PJSIP/" + "x" * 33, "INUSE"),
        ("PJSIP/1000", "SOMETHING_NEW"),
        ("", ""),
    ],
)
def test_ignored_devices_and_states(device, state):
    assert operator_state(device, state) is None


@pytest_twisted.ensureDeferred
async def test_events_become_operator_states(ami, tracker, store, clock):
    ami.emit(state_change("PJSIP/1000", "NOT_INUSE"))
    clock.advance(2)
    ami.emit(state_change("PJSIP/1000", "RINGING"))
    ami.emit(state_change("PJSIP/1000", "INUSE"))  # still inuse: no new history row
    ami.emit(state_change("PJSIP/1001", "UNAVAILABLE"))
    ami.emit(state_change("PJSIP/pstn", "INUSE"))  # the trunk is not an operator
    ami.emit(state_change("Queue:sales", "INUSE"))
    ami.emit({"Event": "Newchannel", "Device": "PJSIP/1002", "State": "INUSE"})
    assert await store.operator_statuses() == {"1000": "inuse", "1001": "offline"}
    hist = await store.operator_history()
    assert [(h["sip"], h["status"], h["time"]) for h in hist.items] == [
        ("1001", "offline", "2026-11-25T21:04:39.123Z"),
        ("1000", "inuse", "2026-11-25T21:04:39.123Z"),
        ("1000", "online", "2026-11-25T21:04:37.123Z"),
    ]


@pytest_twisted.ensureDeferred
async def test_reconnect_applies_the_snapshot(ami, tracker, store):
    ami.emit(state_change("PJSIP/1000", "NOT_INUSE"))
    ami.emit(state_change("PJSIP/1001", "NOT_INUSE"))
    ami.emit(state_change("PJSIP/1002", "UNAVAILABLE"))
    # While AMI was down, 1000 went on a call and 1001 was removed from the PBX.
    ami.device_states = {
        "PJSIP/1000": "INUSE",
        "PJSIP/1002": "NOT_INUSE",
        "PJSIP/1003": "NOT_INUSE",
        "PJSIP/pstn": "NOT_INUSE",
        "Custom:x": "INUSE",
    }
    (done,) = ami.connected()
    await done
    assert await store.operator_statuses() == {
        "1000": "inuse", "1001": "offline", "1002": "online", "1003": "online",
    }


@pytest_twisted.ensureDeferred
async def test_an_empty_snapshot_marks_nobody_offline(ami, tracker, store):
    ami.emit(state_change("PJSIP/1000", "NOT_INUSE"))
    (done,) = ami.connected()
    await done
    assert await store.operator_statuses() == {"1000": "online"}


@pytest_twisted.ensureDeferred
async def test_stop_unsubscribes(ami, store, clock):
    tracker = OperatorTracker(ami, store, clock)
    tracker.start()
    assert len(ami.subscribers) == 1 and len(ami.connect_callbacks) == 1
    assert ami.subscribers[0][1] == "DeviceStateChange"
    tracker.stop()
    assert ami.subscribers == [] and ami.connect_callbacks == []
    ami.emit(state_change("PJSIP/1000", "NOT_INUSE"))
    assert await store.operator_statuses() == {}
