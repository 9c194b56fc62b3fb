"""The events agi_app asks Asterisk for and reads (``FOLLOWED_EVENTS``,
``FOLLOWED_CLASSES``) against what its parts handle: an event a part
reacts to that the AMI link skips would silently never arrive."""

from __future__ import annotations

import ast
import inspect

from twisted.internet.task import Clock

from agi_app.ami.service import FOLLOWED_CLASSES, FOLLOWED_EVENTS
from agi_app.calls import lifecycle
from agi_app.live import control, operators
from agi_app.live.tracker import CallTracker

FOLLOWED = {name.lower() for name in FOLLOWED_EVENTS}
#: the class of each followed event in Asterisk 22 (the flags its manager
#: events are published with: EVENT_FLAG_CALL or EVENT_FLAG_SYSTEM)
CLASS_OF = {
    **{name: "call" for name in (
        "bridgedestroy", "bridgeenter", "bridgeleave", "chanspystart", "devicestatechange",
        "dialbegin", "dialend", "hangup", "mixmonitorstart", "musiconholdstart",
        "musiconholdstop", "newcallerid", "newconnectedline", "newchannel", "newstate",
        "originateresponse", "parkedcall", "parkedcallgiveup", "parkedcalltimeout", "rename",
        "unparkedcall",
    )},
    "fullybooted": "system",
    "contactstatus": "system",
}  # fmt: skip


class _NoAMI:
    def subscribe(self, callback, event_name=None):
        return lambda: None

    def on_connect(self, callback):
        return lambda: None


def _event_names_compared_in(module) -> set[str]:
    """Lower-case event names a module compares an event's name with
    (``name == "hangup"``) or subscribes to (``subscribe(cb, "ParkedCall")``)."""
    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Constant) and isinstance(side.value, str):
                    names.add(side.value.lower())
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "subscribe":
            for arg in node.args[1:]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value.lower())
    return names


def test_every_event_the_tracker_handles_is_followed():
    tracker = CallTracker(_NoAMI(), clock=Clock())
    assert set(tracker._handlers) <= FOLLOWED


def test_the_tracker_sees_every_snapshot_change_of_a_channel():
    # the events that change what a leg shows (state, caller ID, connected line)
    assert {"newstate", "newcallerid", "newconnectedline", "rename"} <= FOLLOWED


def test_lifecycle_operators_and_control_events_are_followed():
    assert {"hangup", "dialend"} <= _event_names_compared_in(lifecycle)
    assert {"hangup", "dialend"} <= FOLLOWED
    assert "devicestatechange" in _event_names_compared_in(operators)
    assert "devicestatechange" in FOLLOWED
    assert "parkedcall" in _event_names_compared_in(control)
    assert "parkedcall" in FOLLOWED


def test_the_service_follows_what_it_tracks_itself():
    assert {"originateresponse", "newchannel", "hangup", "fullybooted", "devicestatechange",
            "contactstatus"} <= FOLLOWED  # fmt: skip


def test_the_classes_asked_for_cover_every_followed_event():
    assert set(CLASS_OF) == FOLLOWED
    assert set(CLASS_OF.values()) <= set(FOLLOWED_CLASSES.split(","))
