"""A fake name resolver for tests of the guard: it knows a few names and
maps them to loopback addresses only, so a test of a refusal cannot send
anything off this host even if the guard under test were broken."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IHostnameResolver, IResolutionReceiver
from zope.interface import implementer

__all__ = ["LoopbackResolver"]


class _Resolution:
    def __init__(self, name: str):
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class LoopbackResolver:
    """``IHostnameResolver`` answering from ``names`` (name -> addresses) at
    once; an unknown name has no address.  Every address must be loopback
    (ValueError otherwise).  ``lookups`` lists the names asked for."""

    def __init__(self, names: Mapping[str, Iterable[str]]):
        self.names: dict[str, tuple[str, ...]] = {}
        for name, addresses in names.items():
            for a in addresses:
                if not ipaddress.ip_address(a).is_loopback:
                    raise ValueError(f"{a} is not a loopback address")
            self.names[name.lower()] = tuple(addresses)
        self.lookups: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> _Resolution:
        self.lookups.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for a in self.names.get(hostName.lower(), ()):
            kind = IPv6Address if ":" in a else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", a, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution
