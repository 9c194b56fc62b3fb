"""The widget's WebSocket on the running service, from non-browser clients:
autobahn's client (:func:`agi_app.ws.testing.connect_widget`) and a plain
TCP socket writing the handshake and frames by hand.

Each way in is refused with a clear reason: another extension than the
token's, a forged token, an expired token, a foreign ``Origin``, a transfer
of a call the token's extension is not in, events of other extensions.
Beside each refusal the same request done rightly succeeds, so the test
fails if the refusal came from something else.
"""

from __future__ import annotations

import base64
import json
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import threads
from widget_service import SECRET, reactor, start_service, until

from agi_app.ws.testing import _server_frames, client_frame, connect_widget


@pytest_twisted.async_yield_fixture
async def service(tmp_path):
    running = await start_service(tmp_path)
    clients = []

    async def connect(origin=None):
        client = await connect_widget(reactor(), running.ws_port, origin=origin)
        clients.append(client)
        return client

    running.connect = connect
    yield running
    for client in clients:
        if client.state != client.STATE_CLOSED:
            client.dropConnection(abort=True)
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_another_extension_is_refused(service):
    client = await service.connect()
    client.send_json({"type": "hello", "client_id": service.token("1000"), "user_phone": "1001"})
    assert await client.closed == (4003, "this client_id is for extension 1000 only")
    client = await service.connect()
    welcome = await client.hello(service.token("1000"))
    assert welcome["user_phone"] == "1000"
    client.send_json({"type": "set_phone", "phone": "1001"})
    assert await client.closed == (4003, "this client_id is for extension 1000 only")
    assert service.hub.widgets_of("1001") == 0


@pytest_twisted.ensureDeferred
async def test_a_forged_token_is_refused(service):
    genuine = service.token("1000")
    message, _, digest = genuine.rpartition(".")
    for forged in (
        service.token("1001", secret="a guess at the secret!"),
        genuine.replace("v1.1000.", "v1.1001."),
        f"v1.1000.{int(message.split('.')[2]) + 3600}.{digest}",
    ):
        client = await service.connect()
        client.send_json({"type": "hello", "client_id": forged})
        assert await client.closed == (4001, "invalid token")
    assert (await (await service.connect()).hello(genuine))["type"] == "welcome"


@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_refused(service):
    now = int(reactor().seconds())
    client = await service.connect()
    client.send_json({"type": "hello", "client_id": service.token("1000", expires=now - 1)})
    assert await client.closed == (4002, "token expired")
    fresh = service.token("1000", expires=now + 5)
    assert (await (await service.connect()).hello(fresh))["type"] == "welcome"


@pytest_twisted.ensureDeferred
async def test_a_foreign_origin_is_refused_at_the_handshake(service):
    with pytest.raises(ConnectionError):
        await service.connect(origin="https://evil.example")
    assert service.hub.refusals["origin"] == 1 and service.hub.connections == 0
    for page in (service.base, "http://localhost:3000"):  # its own pages, loopback pages
        client = await service.connect(origin=page)
        assert (await client.hello(service.token("1000")))["type"] == "welcome"


@pytest_twisted.ensureDeferred
async def test_a_transfer_of_a_call_the_user_is_not_in_is_refused(service):
    outsider = await service.connect()
    await outsider.hello(service.token("1000"))
    owner = await service.connect()
    await owner.hello(service.token("1001"))
    call = service.calls.client_calls("1001")  # a client talks to 1001
    ringing = await owner.next()
    assert (ringing["event"]["type"], ringing["event"]["callID"]) == (2, call)
    tracker = service.app.tracker
    await until(lambda: all(leg.bridge for leg in tracker.call(call).legs.values()))

    outsider.send_json({"type": "transfer", "id": 1, "call_id": call, "phone": "380990000000"})
    error = await outsider.next()
    assert (error["type"], error["code"], error["id"]) == ("error", "unknown_call", 1)
    assert service.redirects() == [], "nothing reached the PBX"

    owner.send_json({"type": "transfer", "id": 2, "call_id": call, "phone": "1002"})
    assert await owner.next() == {"type": "result", "ok": True, "id": 2}
    assert len(service.redirects()) == 1

    service.calls.hang_up(call)
    finished = await owner.next()
    assert finished["event"]["type"] == 3
    # 1000's widget saw nothing of 1001's call: its welcome and its error only.
    assert [m["type"] for m in outsider.messages] == ["welcome", "error"]


# -- a plain socket -----------------------------------------------------------


def raw_exchange(port: int, origin: str | None, messages: list[dict]) -> tuple[str, list]:
    """Open the WebSocket with a plain socket, send ``messages`` as masked
    text frames and read until the server closes: ``(status line, frames)``."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = [
        "GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
        "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
    ]  # fmt: skip
    if origin is not None:
        head.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        answer, _, rest = data.partition(b"\r\n\r\n")
        status = answer.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status:
            return status, []
        for message in messages:
            sock.sendall(client_frame(json.dumps(message).encode()))
        while True:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            rest += chunk
            frames, _ = _server_frames(rest)
            if any(f.opcode == 0x8 for f in frames):
                break
        frames, _ = _server_frames(rest)
        return status, frames


async def exchange(service, messages, origin=None):
    return await threads.deferToThread(raw_exchange, service.ws_port, origin, messages)


def closes(frames):
    return [(f.code, f.reason) for f in frames if f.opcode == 0x8]


@pytest_twisted.ensureDeferred
async def test_plain_socket_refusals(service):
    now = int(reactor().seconds())
    status, _ = await exchange(service, [], origin="http://crm.evil.example")
    assert status.startswith("HTTP/1.1 403")
    cases = [
        ({"client_id": service.token("1000"), "user_phone": "1002"},
         (4003, "this client_id is for extension 1000 only")),
        ({"client_id": service.token("1000", secret="not-the-secret-at-all")},
         (4001, "invalid token")),
        ({"client_id": service.token("1000", expires=now - 60)}, (4002, "token expired")),
        ({"client_id": "password1"}, (4001, "invalid client_id")),
    ]  # fmt: skip
    for hello, refusal in cases:
        status, frames = await exchange(service, [{"type": "hello", **hello}])
        assert " 101 " in status
        assert closes(frames) == [refusal]
        assert not [f for f in frames if f.opcode == 0x1], "nothing but the close"
    # The same way in with a valid token is welcome.
    hello = {"type": "hello", "client_id": service.token("1000")}
    status, frames = await exchange(service, [hello, {"type": "set_phone", "phone": "1002"}],
                                    origin=service.base)  # fmt: skip
    assert json.loads(frames[0].payload)["type"] == "welcome"
    assert closes(frames) == [(4003, "this client_id is for extension 1000 only")]
    assert SECRET not in repr(frames)
