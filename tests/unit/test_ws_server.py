"""The widget WebSocket server over real loopback connections: client_id
check, hello, the JSON wire protocol, bad input, event routing, call() and
transfer()."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from agi_app.calls.service import PBXUnavailable
from agi_app.live.tracker import CallEvent
from agi_app.ws.server import CLOSE_BAD_CLIENT_ID, CLOSE_NO_HELLO, WidgetFactory, WidgetHub
from agi_app.ws.testing import connect_widget


def _reactor():
    from twisted.internet import reactor

    return reactor


class FakeCalls:
    def __init__(self):
        self.placed = []
        self.down = False

    async def place(self, request):
        self.placed.append(request)
        if self.down:
            raise PBXUnavailable("c-x")
        return "c-42", True


class FakeInfo:
    async def get(self, call_id, refresh=False):
        return {"order_id": None, "external_key": None, "record_url": f"http://h/records/{call_id}"}


class FakeControl:
    def __init__(self):
        self.transfers = []

    async def act(self, extension, call_api_id, action, send_dst=None):
        from agi_app.live.control import CallNotFound

        if call_api_id == "nope":
            raise CallNotFound("no such call")
        self.transfers.append((extension, call_api_id, action, send_dst))
        return {}


def _serve(hello_timeout: float):
    reactor = _reactor()
    calls = FakeCalls()
    hub = WidgetHub(
        client_ids=("password", "s3cret"),
        calls=calls,
        info=FakeInfo(),
        default_trunk="pstn",
        call_time_to_ext=20,
    )
    port = reactor.listenTCP(
        0, WidgetFactory(hub, reactor=reactor, hello_timeout=hello_timeout),
        interface="127.0.0.1",
    )  # fmt: skip
    clients = []

    async def connect():
        client = await connect_widget(reactor, port.getHost().port)
        clients.append(client)
        return client

    yield hub, calls, connect
    for c in clients:
        if c.state != c.STATE_CLOSED:
            c.dropConnection(abort=True)
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def server():
    """A widget server on loopback, with time enough for a hello on a busy
    machine (the real reactor: a test's hello may come a second late)."""
    yield from _serve(hello_timeout=10.0)


@pytest.fixture
def impatient_server():
    """The same, closing a connection without a hello after 0.3 s."""
    yield from _serve(hello_timeout=0.3)


async def until(predicate, timeout=5.0):
    """The server's side of a dropped connection closes a moment later."""
    from twisted.internet import task

    reactor = _reactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not met"
        await task.deferLater(reactor, 0.01, lambda: None)


def event(kind, extension="1000", direction="in", duration=None, **call):
    base = {
        "caller_id_number": "380501234567",
        "called_number": "0443334023",
        "init_time_gmt": "2026-11-25 22:00:00",
    }
    base.update(call)
    return CallEvent(
        kind=kind,
        call_api_id="call-1",
        call_id="call-1",
        uniqueid="u-1",
        channel="PJSIP/1000-1",
        extension=extension,
        direction=direction,
        time=1795644042.5,
        call=base,
        status="ANSWER" if kind == "hungup" else None,
        duration=duration,
    )


@pytest_twisted.ensureDeferred
async def test_wrong_client_id_is_refused_with_a_clear_reason(server):
    hub, calls, connect = server
    client = await connect()
    client.send_json({"type": "hello", "client_id": "wrong"})
    code, reason = await client.closed
    assert (code, reason) == (CLOSE_BAD_CLIENT_ID, "invalid client_id")
    client = await connect()
    client.send_json({"type": "hello"})
    assert (await client.closed) == (CLOSE_BAD_CLIENT_ID, "invalid client_id")


@pytest_twisted.ensureDeferred
async def test_hello_must_come_first_and_in_time(impatient_server):
    hub, calls, connect = impatient_server
    client = await connect()
    client.send_json({"type": "call", "phone": "123"})
    assert (await client.closed) == (CLOSE_NO_HELLO, "hello expected")
    silent = await connect()
    assert (await silent.closed) == (CLOSE_NO_HELLO, "hello expected")


@pytest_twisted.ensureDeferred
async def test_welcome_and_set_phone(server):
    hub, calls, connect = server
    client = await connect()
    welcome = await client.hello("s3cret", user_phone="1000")
    assert welcome["type"] == "welcome" and welcome["user_phone"] == "1000"
    assert welcome["protocol"] == 1
    assert hub.widgets_of("1000") == 1
    client.send_json({"type": "set_phone", "phone": "1001", "id": 5})
    assert await client.next() == {"type": "result", "ok": True, "user_phone": "1001", "id": 5}
    assert (hub.widgets_of("1000"), hub.widgets_of("1001")) == (0, 1)
    client.send_json({"type": "set_phone", "phone": "10&01", "id": 6})
    error = await client.next()
    assert error["type"] == "error" and error["code"] == "invalid_phone" and error["id"] == 6
    client.send_json({"type": "ping", "id": "p"})
    assert await client.next() == {"type": "pong", "id": "p"}
    client.sendClose()
    await client.closed
    assert hub.widgets_of("1001") == 0 and hub.connections == 0


@pytest.mark.parametrize(
    "payload, binary, code",
    [
        (b"not json", False, "invalid_json"),
        (b"\xff\xfe", False, None),  # autobahn itself refuses invalid UTF-8 text
        (b"[1, 2]", False, "invalid_message"),
        (b'{"type": 5}', False, "invalid_message"),
        (b'{"type": "launch_rockets"}', False, "unknown_type"),
        (b'{"type": "ping"}', True, "binary_message"),
        (b'{"type": "ping", "pad": "' + b"x" * 5000 + b'"}', False, "message_too_large"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_messages_get_errors_and_the_server_stays_up(server, payload, binary, code):
    hub, calls, connect = server
    client = await connect()
    await client.hello()
    client.sendMessage(payload, isBinary=binary)
    if code is None:
        code_, _reason = await client.closed
        assert code_ == 1007  # invalid payload data
    else:
        error = await client.next()
        assert error["type"] == "error" and error["code"] == code, error
        client.send_json({"type": "ping"})
        assert (await client.next())["type"] == "pong"
    again = await connect()
    assert (await again.hello())["type"] == "welcome"


@pytest_twisted.ensureDeferred
async def test_a_message_over_the_frame_limit_closes_that_connection_only(server):
    hub, calls, connect = server
    other = await connect()
    await other.hello()
    client = await connect()
    await client.hello()
    client.sendMessage(b"x" * 70_000)
    code, _reason = await client.closed
    assert code == 1009
    other.send_json({"type": "ping"})
    assert (await other.next())["type"] == "pong"


@pytest_twisted.ensureDeferred
async def test_events_reach_every_widget_of_the_phone_and_no_other(server):
    hub, calls, connect = server
    a, b, c = await connect(), await connect(), await connect()
    await a.hello(user_phone="1000")
    await b.hello(user_phone="1000")
    await c.hello(user_phone="1001")
    hub.on_call_event(event("ringing"))
    for w in (a, b):
        msg = await w.next()
        assert msg == {
            "type": "event",
            "event": {"type": 2, "callID": "call-1", "from": "380501234567", "to": "0443334023"},
        }
    hub.on_call_event(event("answered"))  # nothing for the widget
    hub.on_call_event(event("hungup", duration=42.4))
    msg = (await a.next())["event"]
    assert msg == {
        "type": 3,
        "callID": "call-1",
        "from": "380501234567",
        "to": "0443334023",
        "start": 1795644000,
        "end": 1795644042,
        "duration": 42,
        "direction": 0,
        "record": "http://h/records/call-1",
    }
    assert (await b.next())["event"]["type"] == 3
    hub.on_call_event(event("hungup", extension="1001", direction="out", duration=0))
    out = (await c.next())["event"]
    assert (out["type"], out["direction"]) == (3, 1)
    assert c.messages[2:] == [], "1001 got only its own call"
    assert len(a.messages) == 3 and len(b.messages) == 3


@pytest_twisted.ensureDeferred
async def test_call_places_an_operator_first_call_from_the_users_phone(server):
    hub, calls, connect = server
    client = await connect()
    await client.hello()
    client.send_json({"type": "call", "id": 1, "phone": "380501234567"})
    assert (await client.next())["code"] == "no_user_phone"
    client.send_json({"type": "set_phone", "phone": "1000"})
    await client.next()
    client.send_json({"type": "call", "id": 2, "phone": "380501234567"})
    assert await client.next() == {"type": "result", "ok": True, "call_id": "c-42", "id": 2}
    [req] = calls.placed
    assert (req.first, req.phone, req.trunk, req.call_time_to_ext) == (
        "1000",
        "380501234567",
        "pstn",
        20,
    )
    client.send_json({"type": "call", "id": 3, "phone": "12,3"})
    assert (await client.next())["code"] == "invalid_phone"
    calls.down = True
    client.send_json({"type": "call", "id": 4, "phone": "380501234567"})
    assert (await client.next())["code"] == "pbx_unavailable"


@pytest_twisted.ensureDeferred
async def test_transfer_without_call_control_says_so(server):
    hub, calls, connect = server
    client = await connect()
    await client.hello(user_phone="1000")
    client.send_json({"type": "transfer", "id": 1, "call_id": "call-1", "phone": "1001"})
    error = await client.next()
    assert error["code"] == "transfer_unavailable" and error["id"] == 1


@pytest_twisted.ensureDeferred
async def test_transfer_goes_to_call_control(server):
    hub, calls, connect = server
    control = FakeControl()
    hub._control = control
    client = await connect()
    await client.hello(user_phone="1000")
    client.send_json({"type": "transfer", "id": 1, "call_id": "call-1", "phone": "1001"})
    assert await client.next() == {"type": "result", "ok": True, "id": 1}
    assert control.transfers == [("1000", "call-1", "transfer", "1001")]
    client.send_json({"type": "transfer", "id": 2, "call_id": "nope", "phone": "1001"})
    assert (await client.next())["code"] == "unknown_call"
    client.send_json({"type": "transfer", "id": 3, "call_id": "a b", "phone": "1001"})
    assert (await client.next())["code"] == "invalid_call_id"


@pytest_twisted.ensureDeferred
async def test_a_dropped_widget_can_reconnect(server):
    hub, calls, connect = server
    client = await connect()
    await client.hello(user_phone="1000")
    client.dropConnection(abort=True)
    await client.closed
    await until(lambda: hub.widgets_of("1000") == 0)
    again = await connect()
    await again.hello(user_phone="1000")
    hub.on_call_event(event("ringing"))
    assert (await again.next())["event"]["type"] == 2


@pytest_twisted.ensureDeferred
async def test_a_closing_widget_does_not_stop_the_others_getting_events(server):
    hub, calls, connect = server
    a, b = await connect(), await connect()
    await a.hello(user_phone="1000")
    await b.hello(user_phone="1000")
    [closing] = [p for p in hub._connections if p.state == p.STATE_OPEN][:1]
    closing.sendClose(1000, "bye")  # in the closing handshake now
    assert hub.send_event("1000", {"type": 2, "callID": "x", "from": "1", "to": "1000"}) == 1
    await until(lambda: any(m["type"] == "event" for w in (a, b) for m in w.messages))
    assert len([m for w in (a, b) for m in w.messages if m["type"] == "event"]) == 1


# -- tokens, origins and what a token-bound widget may do ----------------------
#
# These drive the protocol through FrameLink: the handshake and frames are
# written by hand on a StringTransport and time is a MemoryReactorClock.

SECRET = "0123456789abcdef-widget"
T0 = 1_795_644_000


class Stack:
    """A hub with tokens on a clock, the real call tracker over the fake
    PBX (a client on the trunk talking to extension 1000, call ``trunk-1``)
    and call control that records what it was asked."""

    def __init__(self, *, origins=None, control=True):
        from test_tracker import SECRET as AMI_SECRET
        from test_tracker import USER, Sim
        from twisted.internet.testing import MemoryReactorClock

        from agi_app.ami import AMIService
        from agi_app.ami.testing import FakeAMIServer
        from agi_app.live.tracker import CallTracker

        self.clock = MemoryReactorClock()
        self.clock.advance(T0)
        self.pbx = FakeAMIServer(users={USER: AMI_SECRET}, clock=self.clock)
        self.ami = AMIService("127.0.0.1", 5038, USER, AMI_SECRET, reactor=self.clock)
        self.tracker = CallTracker(self.ami, clock=self.clock, trunks={"pstn"})
        self.tracker.start()
        self.ami.startService()
        self.pbx.accept(self.clock)
        self.sim = Sim(self.pbx)
        self.calls = FakeCalls()
        self.control = FakeControl() if control else None
        self.hub = WidgetHub(
            client_ids=("password",),
            token_secret=SECRET,
            clock=self.clock,
            tracker=self.tracker,
            calls=self.calls,
            control=self.control,
        )
        self.hub.start()
        self.factory = WidgetFactory(self.hub, reactor=self.clock, origins=origins)

    def link(self, origin=None):
        from agi_app.ws.testing import FrameLink

        return FrameLink(self.factory, origin=origin)

    def hello(self, client_id, user_phone=None, origin=None):
        link = self.link(origin)
        assert link.status == 101, link.handshake
        message = {"type": "hello", "client_id": client_id}
        if user_phone is not None:
            message["user_phone"] = user_phone
        link.send_json(message)
        return link


def token(sip, ttl=600, secret=SECRET, now=T0):
    from agi_app.ws import tokens

    return tokens.mint(secret, sip, now + ttl)


def closed_with(link):
    [frame] = [f for f in link.frames() if f.opcode == 0x8]
    return frame.code, frame.reason


@pytest.fixture
def stack():
    return Stack()


def test_a_token_binds_the_connection_to_its_extension(stack):
    link = stack.hello(token("1000"))
    [welcome] = link.messages()
    assert (welcome["type"], welcome["user_phone"]) == ("welcome", "1000")
    assert stack.hub.widgets_of("1000") == 1
    link.send_json({"type": "set_phone", "phone": "1000", "id": 1})
    assert link.messages() == [{"type": "result", "ok": True, "user_phone": "1000", "id": 1}]
    link.send_json({"type": "set_phone", "phone": "1001", "id": 2})
    assert closed_with(link) == (4003, "this client_id is for extension 1000 only")
    assert stack.hub.widgets_of("1001") == 0
    assert stack.hub.refusals["other extension"] == 1


@pytest.mark.parametrize("user_phone", ["1001", "10&00", 1000, ["1000"]])
def test_a_hello_for_another_extension_is_refused(stack, user_phone):
    link = stack.hello(token("1000"), user_phone=user_phone)
    assert closed_with(link) == (4003, "this client_id is for extension 1000 only")
    assert stack.hub.widgets_of("1000") == 0 and link.closing


def test_a_hello_naming_the_tokens_own_extension_is_welcome(stack):
    link = stack.hello(token("1000"), user_phone="1000")
    assert link.messages()[0]["user_phone"] == "1000"


@pytest.mark.parametrize(
    "client_id, reason",
    [
        (token("1000", secret="someone else's secret"), "invalid token"),
        (token("1000")[:-1] + "x", "invalid token"),
        (token("1000").replace("v1.1000.", "v1.1001."), "invalid token"),
        ("v1.1000", "invalid token"),
        ("wrong", "invalid client_id"),
        (None, "invalid client_id"),
        (42, "invalid client_id"),
    ],
)
def test_forged_tokens_and_wrong_ids_are_refused(stack, client_id, reason):
    link = stack.hello(client_id)
    assert closed_with(link) == (4001, reason)
    assert link.messages() == [] and stack.hub.refusals[reason] == 1


def test_an_expired_token_is_refused_and_says_so(stack):
    almost = token("1000", ttl=1)
    stack.clock.advance(0.5)
    assert stack.hello(almost).messages()[0]["type"] == "welcome"
    stack.clock.advance(0.5)
    assert closed_with(stack.hello(almost)) == (4002, "token expired")


def test_the_static_client_id_still_works_beside_tokens(stack):
    link = stack.hello("password", user_phone="1001")
    assert link.messages()[0]["user_phone"] == "1001"
    link.send_json({"type": "set_phone", "phone": "1002"})
    assert link.messages()[0]["user_phone"] == "1002"


def test_without_a_secret_a_token_is_just_a_wrong_client_id():
    from twisted.internet.testing import MemoryReactorClock

    from agi_app.ws.testing import FrameLink

    hub = WidgetHub(client_ids=("password",))
    link = FrameLink(WidgetFactory(hub, reactor=MemoryReactorClock()))
    link.send_json({"type": "hello", "client_id": token("1000")})
    assert closed_with(link) == (4001, "invalid client_id")


def test_call_acts_as_the_tokens_extension(stack):
    link = stack.hello(token("1001"))
    link.send_json({"type": "call", "phone": "380501234567", "id": 1})
    assert link.messages()[1] == {"type": "result", "ok": True, "call_id": "c-42", "id": 1}
    assert [r.first for r in stack.calls.placed] == ["1001"]


def test_transfer_only_of_a_call_the_extension_takes_part_in(stack):
    stack.sim.trunk_to_operator()  # trunk-1: the client talks to 1000
    outsider = stack.hello(token("1001"))
    outsider.messages()
    outsider.send_json({"type": "transfer", "call_id": "trunk-1", "phone": "1002", "id": 7})
    [error] = outsider.messages()
    assert (error["type"], error["code"], error["id"]) == ("error", "unknown_call", 7)
    assert stack.control.transfers == [], "nothing reached call control"
    owner = stack.hello(token("1000"))
    owner.messages()
    owner.send_json({"type": "transfer", "call_id": "trunk-1", "phone": "1002", "id": 8})
    assert owner.messages() == [{"type": "result", "ok": True, "id": 8}]
    assert stack.control.transfers == [("1000", "trunk-1", "transfer", "1002")]


def test_events_reach_only_the_tokens_extension(stack):
    ours, theirs = stack.hello(token("1000")), stack.hello(token("1001"))
    ours.messages(), theirs.messages()
    stack.sim.trunk_to_operator()  # rings 1000
    [ringing] = ours.messages()
    assert (ringing["type"], ringing["event"]["type"]) == ("event", 2)
    assert theirs.messages() == []


@pytest.mark.parametrize(
    "origin, allowed",
    [
        (None, True),  # not a browser
        ("http://127.0.0.1:8080", True),
        ("HTTP://127.0.0.1:8080", True),
        ("https://crm.example.com", True),
        ("https://crm.example.com:443", True),
        ("http://crm.example.com", False),  # another scheme is another origin
        ("https://crm.example.com:8443", False),
        ("https://evil.example", False),
        ("https://crm.example.com.evil.example", False),
        ("http://localhost:3000", True),  # a page served from loopback
        ("http://[::1]:3000", True),
        ("http://127.9.9.9", True),
        ("null", None),  # autobahn refuses it first (400)
        ("file://", None),
        ("chrome-extension://abc", False),
    ],
)
def test_the_origin_is_checked_at_the_handshake(origin, allowed):
    from agi_app.ws.origins import OriginPolicy

    policy = OriginPolicy(
        ("http://127.0.0.1:8080", "https://crm.example.com"), loopback_pages=True
    )
    stack = Stack(origins=policy)
    link = stack.link(origin)
    if allowed:
        assert link.status == 101
        link.send_json({"type": "hello", "client_id": "password"})
        assert link.messages()[0]["type"] == "welcome"
    elif allowed is None:
        assert link.status == 400 and "not allowed" in link.handshake
        assert stack.hub.connections == 0
    else:
        assert link.status == 403, link.handshake
        assert "origin not allowed" in link.handshake
        assert stack.hub.connections == 0 and stack.hub.refusals["origin"] == 1


def test_the_origin_policy_from_the_configuration():
    from agi_app.config import load
    from agi_app.ws.origins import OriginPolicy

    default = OriginPolicy.from_config(load(None, environ={}))
    assert default.allows("http://127.0.0.1:8080") and default.allows("http://localhost:1")
    assert not default.allows("https://crm.example.com")
    listed = OriginPolicy.from_config(
        load(None, environ={"AGI_APP_WEBSOCKET_ALLOWED_ORIGINS": "https://crm.example.com"})
    )
    assert listed.allows("https://crm.example.com")
    assert not listed.allows("http://127.0.0.1:8080"), "a list is exact"
    anywhere = OriginPolicy.from_config(
        load(None, environ={"AGI_APP_WEBSOCKET_ALLOWED_ORIGINS": "*"})
    )
    assert anywhere.allows("https://evil.example")
    public = OriginPolicy.from_config(
        load(
            None,
            environ={
                "AGI_APP_WEBSOCKET_LISTEN": "tcp:10150",
                "AGI_APP_WEBSOCKET_CLIENT_IDS": "",
                "AGI_APP_WEBSOCKET_TOKEN_SECRET": SECRET,
                "AGI_APP_HTTP_PUBLIC_URL": "https://pbx.example.com/agi/",
            },
        )
    )
    assert public.allows("https://pbx.example.com")
    assert not public.allows("http://localhost:3000"), "off loopback, loopback pages are foreign"


def test_stopping_the_hub_closes_every_widget_with_1001(stack):
    ours, theirs = stack.hello(token("1000")), stack.hello("password")
    ours.frames(), theirs.frames()
    stack.hub.stop()
    assert closed_with(ours) == (1001, "server shutting down")
    assert closed_with(theirs) == (1001, "server shutting down")


class LookedUpInfo(FakeInfo):
    """An inbound call the CRM lookup knew (agi_app.inbound)."""

    async def get(self, call_id, refresh=False):
        info = await super().get(call_id, refresh)
        return {**info, "name": "Ivan Petrenko", "crm_url": "https://crm.example/c/17"}


@pytest_twisted.ensureDeferred
async def test_the_incoming_call_event_names_a_caller_the_crm_knew():
    reactor = _reactor()
    hub = WidgetHub(client_ids=("password",), info=LookedUpInfo())
    port = reactor.listenTCP(0, WidgetFactory(hub, reactor=reactor), interface="127.0.0.1")
    client = await connect_widget(reactor, port.getHost().port)
    try:
        await client.hello(user_phone="1000")
        hub.on_call_event(event("ringing"))
        assert (await client.next())["event"] == {
            "type": 2, "callID": "call-1", "from": "380501234567", "to": "0443334023",
            "name": "Ivan Petrenko", "crm_url": "https://crm.example/c/17",
        }  # fmt: skip
        hub.on_call_event(event("hungup", duration=3))
        finished = (await client.next())["event"]
        assert finished["type"] == 3 and "name" not in finished
    finally:
        client.dropConnection(abort=True)
        await defer.maybeDeferred(port.stopListening)
