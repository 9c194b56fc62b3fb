"""Widget clients for tests and benchmarks.

:class:`WidgetClient` speaks the JSON wire protocol over a real WebSocket
connection and queues what the server sends.  :class:`FrameLink` drives a
:class:`~agi_app.ws.server.WidgetProtocol` on a ``StringTransport``,
writing the client's side of RFC 6455 by hand: the opening handshake (with
any ``Origin``), masked frames, and reading back the frames and close code
the server wrote -- exact, fast and free of sockets, for protocol tests and
fuzzing.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import StringTransport

__all__ = ["Frame", "FrameLink", "WidgetClient", "connect_widget"]


class WidgetClient(WebSocketClientProtocol):
    """Collects every message; :meth:`next` waits for the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._waiters: list[Deferred] = []
        self._read = 0
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: count only, do not keep or parse messages (for fan-out benchmarks)
        self.count_only = False
        self.count = 0

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.count += 1
        if self.count_only:
            if self._waiters:
                self._waiters.pop(0).callback(None)
            return
        self.raw.append(payload)
        self.messages.append(json.loads(payload))
        self._wake()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        self.closed.callback((code, reason))
        for d in self._waiters:
            d.errback(ConnectionError(f"closed: {code} {reason}"))
        self._waiters.clear()

    def _wake(self) -> None:
        while self._waiters and self._read < len(self.messages):
            msg = self.messages[self._read]
            self._read += 1
            self._waiters.pop(0).callback(msg)

    def next(self) -> Deferred[dict[str, Any]]:
        """The next message not read yet."""
        if self._read < len(self.messages):
            msg = self.messages[self._read]
            self._read += 1
            return succeed(msg)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def send_json(self, message: Any) -> None:
        """Send ``message`` as JSON text."""
        self.sendMessage(json.dumps(message).encode(), isBinary=False)

    async def hello(self, client_id: str = "password", user_phone: str | None = None) -> dict:
        """Say hello; returns the welcome."""
        msg: dict[str, Any] = {"type": "hello", "client_id": client_id, "client_type": "test"}
        if user_phone is not None:
            msg["user_phone"] = user_phone
        self.send_json(msg)
        return await self.next()


async def connect_widget(
    reactor: Any, port: int, host: str = "127.0.0.1", *, origin: str | None = None
) -> WidgetClient:
    """Open a WebSocket connection to the widget server on ``host:port``,
    sending ``origin`` as the ``Origin`` header (None: none, like a
    non-browser client).  A refused handshake raises ConnectionError."""
    factory = WebSocketClientFactory(f"ws://{host}:{port}", reactor=reactor, origin=origin)
    factory.protocol = WidgetClient
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    proto = await TCP4ClientEndpoint(reactor, host, port).connect(factory)
    await proto.opened
    return proto


# -- RFC 6455 by hand, for FrameLink ------------------------------------------

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass(frozen=True)
class Frame:
    """One frame the server wrote: ``opcode`` and ``payload`` (for a close
    frame also ``code`` and ``reason``)."""

    opcode: int
    payload: bytes

    @property
    def code(self) -> int | None:
        """The close code of a close frame."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])

    @property
    def reason(self) -> str:
        """The close reason of a close frame."""
        return self.payload[2:].decode("utf-8") if self.opcode == OP_CLOSE else ""

    def json(self) -> Any:
        """The payload of a text frame, parsed."""
        return json.loads(self.payload)


def client_frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True) -> bytes:
    """A masked client-to-server frame (RFC 6455 section 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def _server_frames(data: bytes) -> tuple[list[Frame], bytes]:
    frames = []
    while len(data) >= 2:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        at = 2
        if n == 126:
            if len(data) < 4:
                break
            n, at = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, at = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < at + n:
            break
        frames.append(Frame(opcode, data[at : at + n]))
        data = data[at + n :]
    return frames, data


class _Transport(StringTransport):
    # A TCP transport lets go of a producer it never had; autobahn relies
    # on that when it drops a connection.
    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class FrameLink:
    """A server protocol built by ``factory`` on a ``StringTransport``, after
    an opening handshake sent with ``origin`` (None: no Origin header).

    ``status`` is the handshake's HTTP status (101 when it went through);
    :meth:`send` writes one client frame, :meth:`frames` returns the frames
    the server wrote since the last call.
    """

    def __init__(self, factory: Any, *, origin: str | None = None, path: str = "/"):
        self.transport = _Transport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 10150),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1:10150",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        self.proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        raw = self.transport.value()
        head, sep, rest = raw.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        #: the HTTP status of the handshake answer
        self.status = int(status_line[1]) if len(status_line) > 1 else 0
        #: the handshake answer (status line and headers; the body of a refusal)
        self.handshake = head.decode("latin-1")
        self.body = rest.decode("latin-1", "replace") if self.status != 101 else ""
        self._buffer = rest if self.status == 101 else b""
        self.transport.clear()

    def send(self, payload: bytes | str, *, binary: bool = False) -> None:
        """Write one client frame (text, or binary)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.proto.dataReceived(client_frame(data, OP_BINARY if binary else OP_TEXT))

    def send_json(self, message: Any) -> None:
        """Write one text frame holding ``message`` as JSON."""
        self.send(json.dumps(message))

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (a broken frame, say)."""
        self.proto.dataReceived(data)

    def frames(self) -> list[Frame]:
        """The frames the server wrote since the last call."""
        frames, self._buffer = _server_frames(self._buffer + self.transport.value())
        self.transport.clear()
        return frames

    def messages(self) -> list[Any]:
        """The JSON messages among :meth:`frames` (close frames are dropped)."""
        return [f.json() for f in self.frames() if f.opcode == OP_TEXT]

    @property
    def closing(self) -> bool:
        """The server has started to close (or closed) the connection."""
        return self.proto.state in (self.proto.STATE_CLOSING, self.proto.STATE_CLOSED)
