"""Operator state: follows the PBX's device states and keeps ``/api/sipList``
and ``/api/operatorHistory`` (CONTRACT 3.6–3.7) current.

Only ``PJSIP/<sip>`` devices count, ``<sip>`` following the extension rule.
Asterisk's device states map to the three operator states:

==============================================  =========
NOT_INUSE                                       online
INUSE, BUSY, RINGING, RINGINUSE, ONHOLD         inuse
UNAVAILABLE, UNKNOWN, INVALID                   offline
==============================================  =========

Changes arrive as ``DeviceStateChange`` events; after every (re)connection
of the AMI link the whole snapshot (``ami.device_states``) is applied again,
since changes made while the link was down produced no events.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from agi_app.store import Store, iso_time

__all__ = ["DEVICE_STATES", "AMIDeviceSource", "OperatorTracker", "operator_state"]

#: Asterisk device state → operator state.
DEVICE_STATES: Mapping[str, str] = {
    "NOT_INUSE": "online",
    "INUSE": "inuse",
    "BUSY": "inuse",
    "RINGING": "inuse",
    "RINGINUSE": "inuse",
    "ONHOLD": "inuse",
    "UNAVAILABLE": "offline",
    "UNKNOWN": "offline",
    "INVALID": "offline",
}

_PJSIP_DEVICE = re.compile(r"^PJSIP/([A-Za-z0-9_-]{1,32})$", re.ASCII)


class AMIDeviceSource(Protocol):
    """What the tracker needs of the AMI service."""

    device_states: Mapping[str, str]

    def subscribe(
        self, callback: Callable[[Mapping[str, Any]], object], event_name: str | None = None
    ) -> Callable[[], object]: ...

    def on_connect(self, callback: Callable[[Any], object]) -> object: ...


def operator_state(device: str, state: str) -> tuple[str, str] | None:
    """``(sip, operator_state)`` for a PJSIP device's Asterisk state, or None
    when the device is not an operator's or the state word is unknown."""
    m = _PJSIP_DEVICE.match(device or "")
    mapped = DEVICE_STATES.get((state or "").strip().upper())
    if m is None or mapped is None:
        return None
    return m.group(1), mapped


class OperatorTracker:
    """Writes operator state changes from AMI into the store.

    ``exclude``: endpoint names that are not operators (trunks), ignored.
    ``pbx``: the name of the PBX the AMI link is to (its operators' rows).
    """

    _log = Logger()

    def __init__(
        self,
        ami_service: AMIDeviceSource,
        store: Store,
        clock: IReactorTime,
        *,
        exclude: Iterable[str] = (),
        pbx: str = "default",
    ):
        self._ami = ami_service
        self.pbx = pbx
        self._store = store
        self._clock = clock
        self._exclude = frozenset(exclude)
        self._unsubscribe: list[Callable[[], object]] = []

    def start(self) -> None:
        """Subscribe to device state events and to AMI (re)connections."""
        self._unsubscribe.append(self._ami.subscribe(self._on_event, "DeviceStateChange"))
        off = self._ami.on_connect(self.resync)
        if callable(off):
            self._unsubscribe.append(off)

    def stop(self) -> None:
        """Stop following AMI."""
        while self._unsubscribe:
            self._unsubscribe.pop()()

    def _on_event(self, event: Mapping[str, Any]) -> None:
        found = operator_state(str(event.get("Device", "")), str(event.get("State", "")))
        if found is not None and found[0] not in self._exclude:
            self._set(*found)

    def _set(self, sip: str, status: str) -> Deferred[bool]:
        d = self._store.set_operator_status(
            sip, status, iso_time(self._clock.seconds()), pbx=self.pbx
        )
        d.addErrback(
            lambda f: self._log.failure(
                "operator {sip}: storing {status} failed", f, sip=sip, status=status
            )
        )
        return d

    def resync(self, _service: object = None) -> Deferred[None]:
        """Apply the AMI service's device state snapshot: every PJSIP operator
        in it gets its state; operators the store knows that are missing from
        a non-empty snapshot (removed from the PBX meanwhile) become offline.
        Called with the service after every AMI login."""
        seen: dict[str, str] = {}
        for device, state in dict(self._ami.device_states).items():
            found = operator_state(device, state)
            if found is not None and found[0] not in self._exclude:
                seen[found[0]] = found[1]
        for sip, status in seen.items():
            self._set(sip, status)
        d = self._store.operator_statuses(self.pbx)

        def forget_missing(known: dict[str, str]) -> None:
            if not seen:
                # An empty snapshot says nothing yet; do not mark everyone offline.
                return
            for sip, status in known.items():
                if sip not in seen and status != "offline":
                    self._set(sip, "offline")

        d.addCallback(forget_missing)
        d.addErrback(lambda f: self._log.failure("operator resync failed", f))
        return d
