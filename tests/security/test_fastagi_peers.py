"""The real FastAGI listener closes connections from outside ``[agi]
allowed_peers`` before any command: a client bound to 127.0.0.2 (loopback,
but not in ``127.0.0.1/32``) sends a whole AGI environment and gets nothing
back; the same client from 127.0.0.1 runs the script."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from agi_app.agi import ScriptRegistry, listen
from agi_app.config import AGIConfig

ENV = (
    b"agi_network: yes\n"
    b"agi_network_script: hello\n"
    b"agi_request: agi://127.0.0.1/hello\n"
    b"agi_channel: PJSIP/1000-00000001\n"
    b"agi_uniqueid: 1764105600.1\n"
    b"\n"
)


def _reactor():
    from twisted.internet import reactor

    return reactor


class Asterisk(Protocol):
    """Sends the environment, answers every command with ``200 result=1``,
    and fires ``done`` with all it received once the server closes."""

    def __init__(self) -> None:
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(ENV)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for _ in range(data.count(b"\n")):
            self.transport.write(b"200 result=1\n")

    def connectionLost(self, reason) -> None:
        self.done.callback(self.received)


async def _session(port: int, source: str) -> bytes:
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", port, bindAddress=(source, 0))
    client = await connectProtocol(endpoint, Asterisk())
    return await client.done.addTimeout(10, _reactor())


@pytest_twisted.ensureDeferred
async def test_a_peer_outside_allowed_peers_is_closed_before_any_command():
    registry = ScriptRegistry()
    ran: list[str] = []

    @registry.script("hello")
    async def hello(agi) -> None:
        ran.append(agi.channel)

    config = AGIConfig(listen="tcp:0:interface=127.0.0.1", allowed_peers=("127.0.0.1/32",))
    listening = await listen(_reactor(), config, registry)
    factory = listening.factory
    port = listening.getHost().port
    try:
        assert await _session(port, "127.0.0.2") == b""
        assert ran == [] and factory.total == 0 and factory.refused == 1
        assert await _session(port, "127.0.0.1") == b'SET VARIABLE "AGI_APP_RESULT" "OK"\n'
        assert ran == ["PJSIP/1000-00000001"] and factory.total == 1
        assert factory.refused == 1 and factory.active == 0
    finally:
        await listening.stopListening()
