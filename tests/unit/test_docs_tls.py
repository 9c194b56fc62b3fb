"""TLS endpoints as docs/operations.md documents them: ``[http] listen`` and
``[websocket] listen`` as Twisted ``ssl:`` endpoint strings serve the API
over https:// and the widget over wss:// (a CRM page on https may not open
ws://).  A throwaway self-signed certificate for 127.0.0.1, loopback only."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from agi_app.config import is_loopback_listen, load
from agi_app.web.api import Router
from agi_app.web.site import build_site
from agi_app.ws.server import WidgetFactory, WidgetHub
from agi_app.ws.testing import WidgetClient


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """(key file, certificate file, certificate PEM) for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file.write_bytes(pem)
    return key_file, cert_file, pem


def _listen_string(certificate: tuple[Path, Path, bytes]) -> str:
    key_file, cert_file, _ = certificate
    return f"ssl:0:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}"


def _trusting(pem: bytes):
    """Client TLS options that trust only the throwaway certificate."""
    return optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(pem))


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, pem: bytes):
        self.pem = pem

    def creatorForNetloc(self, hostname: bytes, port: int):  # noqa: N802 (Twisted's name)
        return _trusting(self.pem)


def test_ssl_listen_strings_are_accepted_by_the_configuration(certificate) -> None:
    listen = _listen_string(certificate).replace("ssl:0:", "ssl:8443:")
    cfg = load(None, environ={"AGI_APP_HTTP_LISTEN": listen, "AGI_APP_WEBSOCKET_LISTEN":
                              listen.replace("8443", "10151")})  # fmt: skip
    assert cfg.http.listen.startswith("ssl:8443:")
    assert is_loopback_listen(cfg.http.listen)  # api_keys may stay empty on loopback


@pytest_twisted.ensureDeferred
async def test_the_http_api_over_https(certificate) -> None:
    reactor = _reactor()
    router = Router()
    router.add(("GET",), "/api/ping", lambda req: {"pong": True})
    site = build_site(router, api_keys=(), static_dir=None, clock=reactor)
    port = await serverFromString(reactor, _listen_string(certificate)).listen(site)
    try:
        agent = Agent(reactor, contextFactory=_Policy(certificate[2]))
        url = f"https://127.0.0.1:{port.getHost().port}/api/ping.json"
        response = await treq.get(url, agent=agent)
        assert response.code == 200
        assert json.loads(await response.content()) == {"pong": True}
        missing = await treq.get(url.replace("ping", "nothing"), agent=agent)
        assert missing.code == 404
        assert json.loads(await missing.content())["error"]["code"] == "not_found"
    finally:
        await defer.maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_the_widget_over_wss(certificate) -> None:
    reactor = _reactor()
    hub = WidgetHub(client_ids=("password",))
    factory = WidgetFactory(hub, reactor=reactor)
    port = await serverFromString(reactor, _listen_string(certificate)).listen(factory)
    client = None
    try:
        number = port.getHost().port
        client_factory = WebSocketClientFactory(f"wss://127.0.0.1:{number}", reactor=reactor)
        client_factory.protocol = WidgetClient
        endpoint = wrapClientTLS(_trusting(certificate[2]),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", number))  # fmt: skip
        client = await endpoint.connect(client_factory)
        await client.opened
        welcome = await client.hello("password", "1000")
        assert (welcome["type"], welcome["user_phone"]) == ("welcome", "1000")
        client.send_json({"type": "ping", "id": 1})
        assert await client.next() == {"type": "pong", "id": 1}
    finally:
        if client is not None and client.state != client.STATE_CLOSED:
            client.dropConnection(abort=True)
        await defer.maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_trust_the_certificate_is_refused(certificate) -> None:
    """https:// really is TLS with that certificate: a client trusting
    another one fails the handshake."""
    reactor = _reactor()
    router = Router()
    router.add(("GET",), "/api/ping", lambda req: {"pong": True})
    site = build_site(router, api_keys=(), static_dir=None, clock=reactor)
    port = await serverFromString(reactor, _listen_string(certificate)).listen(site)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    other = (
        x509.CertificateBuilder().subject_name(other_name).issuer_name(other_name)
        .public_key(other_key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(other_key, hashes.SHA256())
    )
    try:
        untrusting = _Policy(other.public_bytes(serialization.Encoding.PEM))
        agent = Agent(reactor, contextFactory=untrusting)
        with pytest.raises(ResponseNeverReceived) as failed:
            await treq.get(f"https://127.0.0.1:{port.getHost().port}/api/ping.json", agent=agent)
        assert "certificate verify failed" in str(failed.value.reasons[0].value)
    finally:
        await defer.maybeDeferred(port.stopListening)
