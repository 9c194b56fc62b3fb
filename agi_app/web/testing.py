"""Test helpers: an HTTP client that talks to a real twisted.web Site through
memory, with no sockets.

The client is treq's ``HTTPClient`` over a real HTTP/1.1 ``Agent``; its
connection is an in-memory transport pair.  Bytes are moved as soon as
either side writes (on the next reactor turn), so a site whose handlers wait
on threads or timers answers without the test pumping anything by hand::

    http = MemoryHTTP(build_site(router, api_keys=(), clock=reactor), reactor)
    response = await http.get("http://127.0.0.1/api/recordList.json")
    assert response.code == 200
    body = await response.json()
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from twisted.web.server import Site
from zope.interface import implementer

__all__ = ["MemoryHTTP"]


class _PumpingTransport(iosim.FakeTransport):
    """A memory transport that asks for its pair to be pumped after each write."""

    pump: _Pump

    def write(self, data: bytes) -> None:
        super().write(data)
        self.pump.soon()

    def loseConnection(self) -> None:
        super().loseConnection()
        self.pump.soon()


class _Pump:
    def __init__(self, reactor: IReactorTime):
        self._reactor = reactor
        self._pending = False
        self.io: iosim.IOPump | None = None

    def soon(self) -> None:
        if not self._pending:
            self._pending = True
            self._reactor.callLater(0, self._run)

    def _run(self) -> None:
        self._pending = False
        if self.io is not None:
            self.io.flush()


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, memory: MemoryReactorClock):
        self._memory = memory

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self._memory, "127.0.0.1", uri.port)


@implementer(IAgent)
class _MemoryAgent:
    def __init__(self, site: Site, reactor: IReactorTime):
        self._site = site
        self._reactor = reactor
        self._memory = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self._memory, _Endpoints(self._memory))

    def request(self, method, uri, headers=None, bodyProducer=None) -> Deferred:
        response = self._agent.request(method, uri, headers, bodyProducer)
        if not self._memory.tcpClients:
            return response  # failed before connecting
        _host, port, factory, _timeout, _bind = self._memory.tcpClients.pop()
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000)
        pump = _Pump(self._reactor)
        server = self._site.buildProtocol(client_address)
        server_transport = _PumpingTransport(
            server, isServer=True, hostAddress=server_address, peerAddress=client_address
        )
        client = factory.buildProtocol(None)
        client_transport = _PumpingTransport(
            client, isServer=False, hostAddress=client_address, peerAddress=server_address
        )
        server_transport.pump = client_transport.pump = pump
        pump.io = iosim.connect(server, server_transport, client, client_transport, greet=False)
        pump.soon()
        return response


class MemoryHTTP(HTTPClient):
    """treq's HTTP client bound to ``site`` through memory.

    ``reactor`` is the running reactor the site's handlers use; the access
    log is started with :meth:`start` and stopped with :meth:`stop`.
    """

    def __init__(self, site: Site, reactor: IReactorTime):
        super().__init__(_MemoryAgent(site, reactor))
        self.site = site

    def start(self) -> None:
        """Start the site as a listening port would (opens its access log)."""
        self.site.doStart()

    def stop(self) -> None:
        """Stop the site as closing its port would."""
        self.site.doStop()
