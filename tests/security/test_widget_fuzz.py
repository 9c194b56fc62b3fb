"""Fuzzing the widget's WebSocket protocol (unit level: FrameLink writes the
frames by hand on a StringTransport, time is a MemoryReactorClock).

Whatever a client sends -- any bytes, any JSON, any message type with any
field values, before or after its hello, with a token, a forged one or a
static client_id -- the server never raises, never logs an unhandled
error, and answers every message to an open connection with either a
well-formed message (an ``error`` carries a ``code`` and a ``message``, and
is never ``internal``) or a close frame with a code and a reason.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from agi_app.errors import NotFound, PBXUnavailable
from agi_app.ws import tokens
from agi_app.ws.server import WidgetFactory, WidgetHub
from agi_app.ws.testing import FrameLink

SECRET = "0123456789abcdef-widget"
T0 = 1_795_644_000
ANSWER_TYPES = {"welcome", "result", "pong", "error", "event"}
SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class FakeCalls:
    """Places every call, or says the PBX is down for some numbers."""

    async def place(self, request: Any) -> tuple[str, bool]:
        if request.phone.endswith("0"):
            raise PBXUnavailable("the PBX is unreachable")
        return "c-1", True


class FakeControl:
    """Transfers call ``c-1`` only."""

    async def act(self, extension: str, call_api_id: str, action: str, dst: Any = None) -> dict:
        if call_api_id != "c-1":
            raise NotFound(f"no call {call_api_id}", code="unknown_call")
        return {}


@pytest.fixture
def factory():
    clock = MemoryReactorClock()
    clock.advance(T0)
    hub = WidgetHub(
        client_ids=("password",),
        token_secret=SECRET,
        clock=clock,
        calls=FakeCalls(),
        control=FakeControl(),
    )
    return WidgetFactory(hub, reactor=clock)


@pytest.fixture
def failures():
    """Every error (or worse) the service logs while the test runs.  Only
    what is logged on this thread: the widget runs on a MemoryReactorClock,
    in the test's own thread, while a thread another test left behind (a
    store's writer, say) may log at any time."""
    seen: list[dict] = []
    here = threading.get_ident()

    def observe(event: dict) -> None:
        if threading.get_ident() != here:
            return
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


# -- what a client may send ----------------------------------------------------

VALID = tokens.mint(SECRET, "1000", T0 + 600)
EXPIRED = tokens.mint(SECRET, "1000", T0 - 1)
FORGED = tokens.mint("another secret, not ours", "1000", T0 + 600)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
phones = st.sampled_from(["1000", "1001", "380501234567", "", "10&00", "+380", "a" * 40])
field_values = st.one_of(phones, st.sampled_from([VALID, EXPIRED, FORGED, "password", "c-1"]),
                         json_values)  # fmt: skip
types = st.one_of(
    st.sampled_from(["hello", "set_phone", "ping", "call", "transfer"]),
    st.text(max_size=50),
    json_values,
)
messages = st.fixed_dictionaries(
    {"type": types},
    optional={
        "client_id": field_values,
        "user_phone": field_values,
        "phone": field_values,
        "call_id": field_values,
        "id": field_values,
        "client_type": field_values,
    },
)


def _frames_of(value: Any) -> tuple[bytes, bool]:
    if isinstance(value, bytes):
        return value, False
    return json.dumps(value).encode(), False


frames = st.one_of(
    messages.map(_frames_of),
    json_values.map(_frames_of),
    st.binary(max_size=200).map(lambda b: (b, False)),  # often invalid UTF-8 text
    st.binary(max_size=50).map(lambda b: (b, True)),  # binary frames
    st.text(max_size=100).map(lambda t: (t.encode(), False)),
    st.just((b"x" * 5000, False)),  # over MAX_MESSAGE
)
openers = st.sampled_from(
    [
        None,
        {"type": "hello", "client_id": VALID},
        {"type": "hello", "client_id": "password", "user_phone": "1001"},
    ]
)


def check_answers(link: FrameLink, before_open: bool) -> None:
    """What the server wrote in answer to one message."""
    answer = link.frames()
    if not before_open:
        assert answer == [], "a closing connection answers nothing"
        return
    assert answer, "every message to an open connection is answered"
    for frame in answer:
        if frame.opcode == 0x8:
            assert frame.code is not None and 1000 <= frame.code <= 4999, frame
            assert frame.reason.strip(), f"close {frame.code} without a reason"
            continue
        assert frame.opcode == 0x1, frame
        message = frame.json()
        assert isinstance(message, dict) and message.get("type") in ANSWER_TYPES, message
        if message["type"] == "error":
            assert isinstance(message["code"], str) and message["code"], message
            assert isinstance(message["message"], str) and message["message"], message
            assert message["code"] != "internal", message


@SETTINGS
@given(opener=openers, sequence=st.lists(frames, min_size=1, max_size=6))
def test_every_message_gets_a_clear_answer(factory, failures, opener, sequence):
    link = FrameLink(factory)
    assert link.status == 101
    if opener is not None:
        link.send_json(opener)
        assert link.messages()[0]["type"] == "welcome"
    for payload, binary in sequence:
        was_open = not link.closing
        link.send(payload, binary=binary)
        check_answers(link, was_open)
    assert failures == []


@SETTINGS
@given(hello=messages.filter(lambda m: m["type"] == "hello"))
def test_every_hello_is_welcomed_or_refused_with_a_reason(factory, failures, hello):
    link = FrameLink(factory)
    link.send_json(hello)
    answer = link.frames()
    assert answer, "a hello is always answered"
    first = answer[0]
    if first.opcode == 0x8:
        assert (first.code, first.reason) in {
            (4001, "invalid client_id"),
            (4001, "invalid token"),
            (4002, "token expired"),
            (4003, "this client_id is for extension 1000 only"),
        }, first
        return
    welcome = first.json()
    assert welcome["type"] == "welcome"
    client_id = hello.get("client_id")
    assert client_id in ("password", VALID), "only a valid client_id is welcome"
    if client_id == VALID:
        assert welcome["user_phone"] == "1000"
    assert failures == []


@SETTINGS
@given(data=st.binary(min_size=1, max_size=300))
def test_broken_frames_close_the_connection_cleanly(factory, failures, data):
    link = FrameLink(factory)
    link.send_json({"type": "hello", "client_id": "password"})
    link.frames()
    link.send_raw(data)
    for frame in link.frames():
        if frame.opcode == 0x8:
            assert frame.code is not None and frame.reason, frame
    assert failures == []


@SETTINGS
@given(origin=st.one_of(st.text(max_size=60), st.from_regex(r"\Ahttps?://[a-z0-9.:\[\]-]{1,30}\Z")))
def test_any_origin_header_is_allowed_or_refused_at_the_handshake(failures, origin):
    from agi_app.ws.origins import OriginPolicy

    # HTTP header values are latin-1 text without line breaks.
    origin = "".join(c for c in origin if " " < c <= "\xff")
    clock = MemoryReactorClock()
    hub = WidgetHub(client_ids=("password",))
    policy = OriginPolicy(("https://crm.example.com",), loopback_pages=True)
    link = FrameLink(WidgetFactory(hub, reactor=clock, origins=policy), origin=origin or None)
    assert link.status in (101, 400, 403), link.handshake
    if link.status == 101:
        assert policy.allows(origin or None)
    assert failures == []
