"""Where agi_app may connect to on someone else's word: the guard against
server-side request forgery (SSRF).

A CRM names URLs that agi_app requests later (webhook subscriptions; a CRM
lookup).  Unchecked, such a URL makes agi_app a proxy into the network it
runs in: the cloud metadata service (``169.254.169.254``), the PBX's AMI
(``127.0.0.1:5038``), agi_app's own API, anything on a private network.

The rule (:class:`TargetGuard`)
-------------------------------
A target address is refused unless it is a public unicast address: loopback,
private (RFC 1918, unique local, site-local), link-local, multicast,
unspecified, shared (carrier-grade NAT, ``100.64.0.0/10``), broadcast,
documentation, benchmarking and other reserved blocks are refused.  An IPv6
address that carries an IPv4 address is judged by that address too:
IPv4-mapped (``::ffff:127.0.0.1``) is that IPv4 address; NAT64
(``64:ff9b::/96``), 6to4 (``2002::/16``) and IPv4-translated forms are
refused when the embedded address is; IPv4-compatible (``::a.b.c.d``,
deprecated) is refused outright.

Addresses inside ``allowed_networks`` (``[events] allowed_networks``) are let
through -- except agi_app's own listening ports (HTTP, FastAGI, WebSocket)
and the AMI port, on any address of this host: those are never a target.

Two checks
----------
* :meth:`TargetGuard.check_url`, when a URL is accepted (a subscription):
  the host as written.  Numeric hosts are read the way browsers and
  ``inet_aton`` read them (``2130706433``, ``0x7f000001``, ``0177.0.0.1``,
  ``127.1``, a trailing dot), ``localhost`` names as loopback, and a URL with
  user information (``http://name@host/``) is refused: parsers disagree on
  where its host begins.  Other names are not resolved here.
* :class:`GuardedEndpointFactory`, when connecting (a delivery): the host is
  resolved, every address is checked, and the TCP connection goes only to an
  address that passed.  A name that resolved to a public address when the
  URL was accepted and to ``127.0.0.1`` now (DNS rebinding) is refused then:
  the connection fails with :class:`ForbiddenTarget`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from agi_app.errors import InvalidInput

__all__ = [
    "FORBIDDEN",
    "Address",
    "ForbiddenTarget",
    "GuardedEndpoint",
    "GuardedEndpointFactory",
    "NetworkSet",
    "TargetGuard",
    "listen_port",
    "parse_host",
    "parse_networks",
    "resolve",
    "why_forbidden",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: what the guard's refusals are called, in the API and the delivery log
FORBIDDEN = "forbidden_target"


class ForbiddenTarget(InvalidInput):
    """A URL's host is, or resolves to, an address agi_app must not connect
    to (400 ``forbidden_target`` naming the field)."""

    def __init__(self, field: str, message: str):
        super().__init__(field, message, code=FORBIDDEN)


# -- networks -------------------------------------------------------------------


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (``10.0.0.0/8``, ``::1/128``; a bare address is a /32 or /128).
    Raises ValueError naming the first bad one."""
    out = []
    for text in values:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not a network (like 10.0.0.0/8 or fd00::/8)") from None
    return tuple(out)


def _plain(address: Address) -> Address:
    """An IPv4-mapped IPv6 address is its IPv4 address; others are themselves."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:
            return ipaddress.IPv6Address(address.exploded.split("%", 1)[0])
    return address


class NetworkSet:
    """Networks an address can be looked up in; an IPv4-mapped IPv6 address
    (``::ffff:10.0.0.1``) is found in the IPv4 networks."""

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str | Network] = ()):
        self.networks = tuple(
            n if not isinstance(n, str) else parse_networks([n])[0] for n in networks
        )

    def __contains__(self, address: object) -> bool:
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return False
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        address = _plain(address)
        return any(address.version == n.version and address in n for n in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"NetworkSet({', '.join(map(str, self.networks))})"


# -- what is refused --------------------------------------------------------------

_EMBEDS = "embeds"  # judged by the IPv4 address inside

_V4_BLOCKS: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "an unspecified address"),  # 0.0.0.0 reaches this host
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "a reserved address"),
        ("192.0.2.0/24", "a reserved (documentation) address"),
        ("192.88.99.0/24", "a reserved (6to4 relay) address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a reserved (benchmarking) address"),
        ("198.51.100.0/24", "a reserved (documentation) address"),
        ("203.0.113.0/24", "a reserved (documentation) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),  # 255.255.255.255 (broadcast) too
    )
)

# Most specific first: the first block an address is in decides.
_V6_BLOCKS: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("::ffff:0:0/96", _EMBEDS),  # IPv4-mapped: never reaches here, see _plain
        ("::ffff:0:0:0/96", _EMBEDS),  # IPv4-translated (SIIT)
        ("::/96", "a reserved (IPv4-compatible) address"),
        ("64:ff9b::/96", _EMBEDS),  # NAT64, well-known prefix
        ("64:ff9b:1::/48", "a private (local NAT64) address"),
        ("100::/64", "a reserved (discard) address"),
        ("2001:db8::/32", "a reserved (documentation) address"),
        ("2001::/23", "a reserved (IETF protocol, Teredo) address"),
        ("2002::/16", _EMBEDS),  # 6to4
        ("3fff::/20", "a reserved (documentation) address"),
        ("5f00::/16", "a reserved (segment routing) address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a private (site-local) address"),
        ("ff00::/8", "a multicast address"),
    )
)
_V6_UNICAST = ipaddress.IPv6Network("2000::/3")


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    if address.sixtofour is not None:
        return address.sixtofour
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def why_forbidden(address: Address) -> str | None:
    """Why ``address`` is no public unicast address (``"a loopback
    address"``...), or None when it is one.  ``allowed_networks`` are not
    considered here."""
    address = _plain(address)
    if isinstance(address, ipaddress.IPv4Address):
        for net, why in _V4_BLOCKS:
            if address in net:
                return why
        if not address.is_global:  # whatever the running Python knows more of
            return "a reserved address"
        return None
    for net, why in _V6_BLOCKS:
        if address in net:
            if why != _EMBEDS:
                return why
            inner = _embedded(address)
            reason = why_forbidden(inner)
            return f"a form of {inner}, {reason}" if reason else None
    if address not in _V6_UNICAST:
        return "a reserved (not global unicast) address"
    return None


# -- reading hosts ------------------------------------------------------------------

_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$", re.ASCII)
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdef"}


def _ipv4_number(part: str) -> int | None:
    base, digits = 10, part
    if part[:2] in ("0x", "0X"):
        base, digits = 16, part[2:]
    elif len(part) > 1 and part[0] == "0":
        base, digits = 8, part[1:]
    digits = digits.lower()
    if not all(c in _DIGITS[base] for c in digits):
        return None
    if base != 16 and not digits:
        return None
    return int(digits or "0", base)


def _ends_in_number(parts: list[str]) -> bool:
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return last[:2] in ("0x", "0X") and _ipv4_number(last) is not None


def _ipv4(host: str) -> ipaddress.IPv4Address | None:
    """A numeric IPv4 host as browsers (WHATWG URL) and ``inet_aton`` read
    it: one to four parts, each decimal, ``0x`` hex or ``0`` octal, the last
    filling the remaining bytes.  None: not meant as an address."""
    parts = host.split(".")
    if not parts or not _ends_in_number(parts):
        return None
    numbers = [_ipv4_number(p) if p else None for p in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise ValueError("looks like an IPv4 address but is none")
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):  # type: ignore[operator]
        raise ValueError("looks like an IPv4 address but is out of range")
    value = last + sum(n << (8 * (3 - i)) for i, n in enumerate(head))  # type: ignore[operator]
    return ipaddress.IPv4Address(value)


def parse_host(host: str, field: str = "url") -> Address | str:
    """The address a URL's host denotes, or the host name (lower case,
    without a trailing dot).  Raises :class:`ForbiddenTarget` for a host that
    looks numeric but is no address, an IPv6 zone (``%eth0``), or anything
    else that is not a plain host name."""
    text = host.strip("[]") if host.startswith("[") else host
    if ":" in text:
        if "%" in text:
            raise ForbiddenTarget(field, f"{field}: an IPv6 zone ({host}) is not allowed")
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise ForbiddenTarget(field, f"{field}: {host!r} is not an IPv6 address") from None
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    try:
        address = _ipv4(name)
    except ValueError as e:
        raise ForbiddenTarget(field, f"{field}: host {host!r} {e}") from None
    if address is not None:
        return address
    if not _NAME.match(name) or len(name) > 253:
        raise ForbiddenTarget(field, f"{field}: {host!r} is not a plain host name")
    return name


def _is_localhost(name: str) -> bool:
    # RFC 6761: localhost and every name under it are loopback
    return name == "localhost" or name.endswith(".localhost")


_LOCALHOST = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


def listen_port(description: str) -> int | None:
    """The TCP port of a Twisted server endpoint string (``tcp:8080:...``,
    ``ssl:port=8443``), or None (a UNIX socket, a port not given)."""
    parts = re.split(r"(?<!\\):", description)
    if parts[0].lower() not in ("tcp", "tcp6", "ssl"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    raw = named.get("port", positional[0] if positional else "")
    return int(raw) if raw.isdigit() else None


def _is_this_host(address: Address) -> bool:
    """Whether ``address`` is one of this host's own (loopback, unspecified,
    or bound to an interface).  Binding a UDP socket to it tells without
    sending anything."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class TargetGuard:
    """Decides whether agi_app may connect to an address and port.

    :param allowed_networks: CIDRs let through besides public addresses
        (``[events] allowed_networks``)
    :param own_ports: ``(port, what)`` never connected to on any address of
        this host, allowed or not (agi_app's listening ports, the AMI's)
    :param own_targets: ``(address, port, what)`` never connected to (the
        AMI of a PBX on another host)
    """

    def __init__(
        self,
        allowed_networks: Iterable[str | Network] = (),
        *,
        own_ports: Iterable[tuple[int, str]] = (),
        own_targets: Iterable[tuple[Address, int, str]] = (),
    ):
        self.allowed = NetworkSet(allowed_networks)
        self.own_ports = dict((port, what) for port, what in own_ports)
        self.own_targets = {(_plain(a), port): what for a, port, what in own_targets}

    @classmethod
    def from_config(cls, config: Any) -> TargetGuard:
        """The guard of a :class:`~agi_app.config.Config`: ``[events]
        allowed_networks``, and the ports of ``[http]``, ``[agi]``,
        ``[websocket]`` and ``[ami]`` as this host's own."""
        events = getattr(config, "events", None)
        own: list[tuple[int, str]] = []
        for section, what in (
            ("http", "agi_app's HTTP API"),
            ("agi", "agi_app's FastAGI server"),
            ("websocket", "agi_app's WebSocket"),
        ):
            port = listen_port(getattr(getattr(config, section, None), "listen", "") or "")
            if port:
                own.append((port, what))
        targets: list[tuple[Address, int, str]] = []
        ami = getattr(config, "ami", None)
        if ami is not None:
            host = ami.host.strip("[]").lower().rstrip(".")
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if _is_localhost(host) or (address is not None and _is_this_host(address)):
                own.append((ami.port, "the PBX's AMI"))
            elif address is not None:
                targets.append((address, ami.port, "the PBX's AMI"))
        return cls(
            getattr(events, "allowed_networks", ()), own_ports=own, own_targets=targets
        )

    def refusal(self, address: Address, port: int) -> str | None:
        """Why agi_app must not connect to ``address:port`` (``"a loopback
        address ..."``), or None."""
        plain = _plain(address)
        what = self.own_targets.get((plain, port))
        if what is None and port in self.own_ports and _is_this_host(plain):
            what = self.own_ports[port]
        if what is not None:
            return f"this host, whose port {port} is {what}"
        if plain in self.allowed:
            return None
        reason = why_forbidden(plain)
        if reason is None:
            return None
        return f"{reason} (allowed: public addresses and [events] allowed_networks)"

    def check_url(self, url: str, field: str = "url") -> None:
        """Refuse (:class:`ForbiddenTarget`) a URL whose host, as written,
        denotes a forbidden address (see the module docstring); host names
        other than ``localhost`` pass, to be checked when connecting."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname or "", parts.port
        except ValueError:
            raise InvalidInput(field, f"{field} is not a valid URL") from None
        if "@" in parts.netloc:
            raise ForbiddenTarget(
                field, f"{field} must not carry user information (name@host)"
            )
        if port is None:
            port = 443 if parts.scheme.lower() == "https" else 80
        target = parse_host(host, field)
        if isinstance(target, str):
            if not _is_localhost(target):
                return
            addresses: Sequence[Address] = _LOCALHOST
        else:
            addresses = (target,)
        # Like a connection (GuardedEndpoint): refused when no address passes.
        reasons = [(a, self.refusal(a, port)) for a in addresses]
        if all(reason is not None for _a, reason in reasons):
            address, reason = reasons[0]
            raise ForbiddenTarget(field, _refused(field, host, address, reason))  # type: ignore[arg-type]


def _refused(field: str, host: str, address: Address, reason: str, verb: str = "is") -> str:
    address = _plain(address)
    if host.strip("[]") == str(address):
        return f"{field}: {host} is {reason}"
    return f"{field}: {host} {verb} {address}, {reason}"


# -- connecting -----------------------------------------------------------------


@implementer(IResolutionReceiver)
class _Collect:
    def __init__(self, done: defer.Deferred[list[Any]]):
        self.done = done
        self.addresses: list[Any] = []

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        if not self.done.called:  # cancelled meanwhile
            self.done.callback(self.addresses)


def resolve(resolver: IHostnameResolver, name: str, port: int) -> defer.Deferred[list[Address]]:
    """The TCP addresses of ``name`` from an ``IHostnameResolver`` (the
    reactor's ``nameResolver``)."""
    done: defer.Deferred[list[Any]] = defer.Deferred()
    resolver.resolveHostName(_Collect(done), name, portNumber=port)

    def addresses(found: list[Any]) -> list[Address]:
        out = []
        for a in found:
            if isinstance(a, TwistedIPv4Address | TwistedIPv6Address):
                try:
                    out.append(ipaddress.ip_address(a.host))
                except ValueError:
                    continue
        return out

    return done.addCallback(addresses)


@implementer(IStreamClientEndpoint)
class GuardedEndpoint:
    """A TCP client endpoint to ``host:port`` that connects only to an
    address the guard lets through.

    The host is read with :func:`parse_host` (so ``2130706433`` is
    127.0.0.1 here too); a name is resolved with ``resolver``.  Addresses the
    guard refuses are dropped; when none is left the connection fails with
    :class:`ForbiddenTarget` and nothing was sent anywhere.  The others are
    tried in turn, ``timeout`` seconds each.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        guard: TargetGuard,
        *,
        resolver: IHostnameResolver | None = None,
        timeout: float = 30.0,
    ):
        self._reactor = reactor
        self._host = host
        self._port = port
        self._guard = guard
        self._resolver = resolver
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return defer.ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        target = parse_host(self._host)
        if isinstance(target, str):
            resolver = self._resolver or self._reactor.nameResolver
            addresses = await resolve(resolver, target, self._port)
            if not addresses:
                raise DNSLookupError(f"no address for {target}")
        else:
            addresses = [target]
        verb = "resolves to" if isinstance(target, str) else "is"
        allowed = []
        refused: tuple[Address, str] | None = None
        for address in addresses:
            reason = self._guard.refusal(address, self._port)
            if reason is None:
                allowed.append(address)
            elif refused is None:
                refused = (address, reason)
        if not allowed:
            assert refused is not None
            raise ForbiddenTarget("url", _refused("url", self._host, *refused, verb=verb))
        failure: BaseException | None = None
        for address in allowed:
            kind = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
            endpoint = kind(self._reactor, str(address), self._port, timeout=self._timeout)
            try:
                return await endpoint.connect(factory)
            except defer.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - try the next address
                failure = e
        assert failure is not None
        raise failure


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """Endpoints for ``twisted.web.client.Agent.usingEndpointFactory``: like
    the Agent's own (TCP for ``http``, TLS verified against the URL's host
    for ``https``), but every connection is a :class:`GuardedEndpoint`."""

    def __init__(
        self,
        reactor: Any,
        guard: TargetGuard,
        *,
        resolver: IHostnameResolver | None = None,
        connect_timeout: float = 30.0,
        tls_policy: Any = None,
    ):
        self._reactor = reactor
        self.guard = guard
        self._resolver = resolver
        self._timeout = connect_timeout
        self._tls = tls_policy or BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii", "replace")
        endpoint = GuardedEndpoint(
            self._reactor, host, uri.port, self.guard,
            resolver=self._resolver, timeout=self._timeout,
        )  # fmt: skip
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        raise ForbiddenTarget("url", f"scheme {uri.scheme!r} is not http or https")
