"""A widget client for tests and benchmarks: speaks the JSON wire protocol
over a real WebSocket connection and queues what the server sends."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint

__all__ = ["WidgetClient", "connect_widget"]


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


async def connect_widget(reactor: Any, port: int, host: str = "127.0.0.1") -> WidgetClient:
    """Open a WebSocket connection to the widget server on ``host:port``."""
    factory = WebSocketClientFactory(f"ws://{host}:{port}", reactor=reactor)
    factory.protocol = WidgetClient
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    proto = await TCP4ClientEndpoint(reactor, host, port).connect(factory)
    await proto.opened
    return proto
