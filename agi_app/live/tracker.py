"""The live call tracker: every call on the PBX, built from AMI events.

:class:`CallTracker` follows every channel the AMI session reports -- calls
agi_app placed and calls it did not (a client calling in through the trunk,
operators calling each other) -- and groups them into calls:

* channels with the same ``Linkedid`` (Asterisk gives a dialled channel the
  linkedid of its caller and rewrites it to the oldest one when channels are
  bridged);
* channels carrying the same ``AGI_APP_CALL_ID`` (manager.conf
  ``channelvars``), which agi_app sets on every call it places;
* the caller and the callee of every ``DialBegin``, the members of every
  bridge, the two halves of a Local channel, and a ChanSpy leg with the
  channel it listens to.

A call keeps one ``call_api_id`` for its whole life: the agi_app call id when
the call carries one (so ``generalCallID`` works wherever a ``call_api_id``
is expected), otherwise the Linkedid of its first channel.  When two calls
merge (an attended transfer, a pickup) the survivor keeps its id and the
other id stays an alias until the call ends.

What a client sees (:meth:`CallTracker.calls_of_extension`) is the
``call_mdl`` of CONTRACT section 5, from the point of view of one
extension: direction, caller, called number, DID, times and the parties'
extensions.

After every AMI (re)connect the tracker resynchronises from
``AMIService.channels`` (rebuilt by ``CoreShowChannels``): channels that
ended while the link was down end their calls, channels that appeared are
added with their creation time taken from ``Duration``.

Subscribers (:meth:`CallTracker.subscribe`) get a :class:`CallEvent` for
every leg of a call: ``ringing`` when it starts, ``answered`` when its
conversation starts, ``hungup`` when it ends.  See :class:`CallEvent`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.logger import Logger

__all__ = [
    "CALL_ID_VAR",
    "CallEvent",
    "CallTracker",
    "Leg",
    "TrackedCall",
    "gmt",
]

log = Logger(namespace="agi_app.live.tracker")

#: the inherited channel variable agi_app puts on every channel of its calls
CALL_ID_VAR = "AGI_APP_CALL_ID"

# ChannelState values (include/asterisk/channelstate.h)
STATE_DOWN = 0
STATE_RING = 4  # a call arrived from the device: it is the caller
STATE_RINGING = 5  # the device is ringing
STATE_UP = 6

#: the dialplan context agi_app puts a held party in (dialplan/extensions.conf)
HOLD_CONTEXT = "agi-app-hold"

_UNKNOWN = ("", "<unknown>", "<Unknown>")
_DURATION = re.compile(r"^(\d+):(\d{2}):(\d{2})$")
# Q.850 cause -> the hangup status a CRM expects (CONTRACT 6, CallStatus)
_CAUSE_STATUS = {
    1: "CHANUNAVAIL",  # unallocated number
    3: "CHANUNAVAIL",  # no route
    17: "BUSY",
    18: "NOANSWER",
    19: "NOANSWER",
    20: "CHANUNAVAIL",  # subscriber absent
    21: "BUSY",  # rejected
    26: "CANCEL",  # answered elsewhere (a pickup)
    27: "CHANUNAVAIL",
    34: "CONGESTION",
    38: "CONGESTION",
    41: "CONGESTION",
    42: "CONGESTION",
}
_DIAL_STATUSES = frozenset({"ANSWER", "BUSY", "NOANSWER", "CANCEL", "CONGESTION", "CHANUNAVAIL"})


def gmt(seconds: float | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS`` in GMT (CONTRACT 5), or None."""
    if seconds is None:
        return None
    whole = int(seconds)
    # Every call event shows the times of its call, mostly the same few
    # seconds: the text of the last ones is kept (strftime is the dearest
    # part of a call view).
    text = _GMT_MADE.get(whole)
    if text is None:
        if len(_GMT_MADE) >= _GMT_KEPT:
            _GMT_MADE.clear()
        text = _GMT_MADE[whole] = datetime.fromtimestamp(whole, UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
    return text


#: the channel snapshot headers :meth:`CallTracker._update` reads, in its order
_SNAPSHOT = (
    "Channel", "ChannelState", "CallerIDNum", "CallerIDName", "ConnectedLineNum",
    "ConnectedLineName", "Context", "Exten", "Linkedid",
)  # fmt: skip
#: prefix (``""``, ``Dest``...) -> the names of :data:`_SNAPSHOT` with it, made once
_SNAPSHOT_KEYS: dict[str, tuple[str, ...]] = {}

_GMT_MADE: dict[int, str] = {}
_GMT_KEPT = 512


def _known(value: str | None) -> str | None:
    return None if value is None or value in _UNKNOWN else value


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _duration(value: str | None) -> int:
    """Seconds of a CoreShowChannel ``Duration`` (``HH:MM:SS``)."""
    m = _DURATION.match(value or "")
    if not m:
        return 0
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))


def _variables(msg: Mapping[str, str], prefix: str) -> dict[str, str]:
    """``ChanVariable``-style headers of one channel in an event (``DestChanVariable``...)."""
    if not prefix:
        # the event's own channel: made once per event, shared with the
        # other subscribers (do not change it)
        variables = getattr(msg, "variables", None)
        if variables is not None:
            return variables
    getall = getattr(msg, "getall", None)
    values = getall(f"{prefix}ChanVariable") if getall else []
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if sep and name:
            out[name] = value
    return out


@dataclass
class Leg:
    """One channel of a call, as far as the tracker knows it."""

    uniqueid: str
    name: str
    linkedid: str
    created: float
    state: int = STATE_DOWN
    caller_num: str | None = None
    caller_name: str | None = None
    connected_num: str | None = None
    connected_name: str | None = None
    context: str = ""
    exten: str = ""
    #: the number the device dialled (a call placed by the device itself)
    first_exten: str | None = None
    #: ``AGI_APP_CALL_ID`` of the channel, if any
    call_id: str | None = None
    #: the extension whose device this channel is (None: outside line or internal)
    extension: str | None = None
    #: a channel of the trunk (an outside line)
    outside: bool = False
    #: a Local or other internal channel: grouped, never shown as a party
    internal: bool = False
    #: the device placed this call (the channel was created ringing in, state Ring)
    inbound: bool = False
    #: created by Originate (a DialBegin without a caller)
    originated: bool = False
    #: another channel dialled this one (Dial, Queue...)
    dialed: bool = False
    #: uniqueid of the channel that dialled this one
    dialed_by: str | None = None
    #: the extension the dialling channel was at, i.e. the number it dialled
    dial_exten: str | None = None
    #: the Dial string that reached this channel (``380501234567@pstn``)
    dial_string: str | None = None
    #: the last DialEnd status of this channel as a callee
    dial_status: str | None = None
    answered: float | None = None
    #: first time this channel was in a bridge with another one
    talking: float | None = None
    bridge: str | None = None
    on_hold: bool = False
    #: uniqueid of the channel this one listens to (ChanSpy)
    spying_on: str | None = None
    #: parking space while parked
    parked_at: str | None = None
    #: "in"/"out", fixed when the first event of the leg is emitted
    direction: str | None = None
    emitted: set[str] = field(default_factory=set)
    call: TrackedCall | None = field(default=None, repr=False)

    @property
    def party(self) -> bool:
        """A device taking part in the call (not an internal channel, not a spy)."""
        return not self.internal and self.spying_on is None


@dataclass
class TrackedCall:
    """One call: a group of channels that belong together."""

    call_api_id: str
    created: float
    call_id: str | None = None
    legs: dict[str, Leg] = field(default_factory=dict)
    linkedids: set[str] = field(default_factory=set)
    #: every agi_app call id seen on its channels (two merged calls have two)
    call_ids: set[str] = field(default_factory=set)
    aliases: set[str] = field(default_factory=set)
    #: uniqueid of a channel a MixMonitor started on, if any
    recorded: str | None = None

    def live_legs(self) -> list[Leg]:
        """The channels, oldest first."""
        return sorted(self.legs.values(), key=lambda leg: (leg.created, leg.uniqueid))


@dataclass(frozen=True)
class CallEvent:
    """What happened to one leg of a call; subscribers receive these.

    ``kind``:
        ``ringing`` (the leg starts: the extension's phone rings, or the
        extension/outside party places the call), ``answered`` (the leg is
        connected to another party: in a bridge with it, or listening in) or
        ``hungup`` (the leg ended).  A leg gives at most one of each, in that
        order; a leg found already running after an AMI reconnect gives no
        ``ringing``.
    ``extension``:
        the extension whose device the leg is; None for an outside line.
    ``direction``:
        ``in`` (towards the extension: it is rung, or an outside party
        calls in) or ``out`` (the extension calls, or an outside number is
        dialled).  Calls agi_app places for an operator are ``out``.
    ``call``:
        the call's ``call_mdl`` as seen by ``extension`` at that moment (for
        an outside line: as seen by the first extension of the call, or with
        null extensions when there is none).
    ``status`` and ``duration`` (``hungup`` only):
        ``ANSWER``, ``BUSY``, ``NOANSWER``, ``CANCEL``, ``CONGESTION`` or
        ``CHANUNAVAIL``; seconds between ``answered`` and the hangup (0 when
        it never was).
    """

    kind: str
    call_api_id: str
    call_id: str | None
    uniqueid: str
    channel: str
    extension: str | None
    direction: str
    time: float
    call: dict[str, Any]
    status: str | None = None
    duration: float | None = None
    cause: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the event."""
        return {
            "kind": self.kind,
            "call_api_id": self.call_api_id,
            "call_id": self.call_id,
            "uniqueid": self.uniqueid,
            "channel": self.channel,
            "extension": self.extension,
            "direction": self.direction,
            "time": self.time,
            "call": self.call,
            "status": self.status,
            "duration": self.duration,
            "cause": self.cause,
        }


class CallTracker:
    """Every call on one PBX, kept current from its AMI events.

    :param ami: the PBX link (:class:`agi_app.ami.service.AMIService`): its
        ``subscribe``, ``on_connect``, ``channels``, ``device_states``
    :param clock: an ``IReactorTime`` (event times and creation times)
    :param party_techs: channel technologies of devices (``PJSIP``); other
        channels (Local...) only tie calls together
    :param trunks: endpoint names that are outside lines, not extensions
        (``[dialing] default_trunk`` and ``trunks``); fixed for the tracker's
        life, never learnt from the calls it sees
    :param extension_tech: the technology of extensions (``PJSIP``): an
        extension ``1000`` is the device ``PJSIP/1000``
    """

    def __init__(
        self,
        ami: Any,
        *,
        clock: Any,
        party_techs: Collection[str] = ("PJSIP",),
        trunks: Iterable[str] = ("pstn",),
        extension_tech: str = "PJSIP",
    ):
        self.ami = ami
        self.clock = clock
        self.party_techs = frozenset(party_techs)
        self.trunks = frozenset(trunks)
        self.extension_tech = extension_tech
        self._legs: dict[str, Leg] = {}
        self._calls: dict[str, TrackedCall] = {}
        self._by_linkedid: dict[str, TrackedCall] = {}
        self._by_call_id: dict[str, TrackedCall] = {}
        self._aliases: dict[str, TrackedCall] = {}
        self._bridges: dict[str, set[str]] = {}
        self._ext_legs: dict[str, set[str]] = {}
        self._names: dict[str, str] = {}
        self._subscribers: list[Callable[[CallEvent], object]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._handlers: dict[str, Callable[[Any], None]] = {
            "newchannel": self._on_newchannel,
            "dialbegin": self._on_dial_begin,
            "dialend": self._on_dial_end,
            "bridgeenter": self._on_bridge_enter,
            "bridgeleave": self._on_bridge_leave,
            "bridgedestroy": self._on_bridge_destroy,
            "hangup": self._on_hangup,
            "musiconholdstart": lambda m: self._on_moh(m, True),
            "musiconholdstop": lambda m: self._on_moh(m, False),
            "chanspystart": self._on_spy_start,
            "mixmonitorstart": self._on_mixmonitor,
            "parkedcall": self._on_parked,
            "unparkedcall": self._on_unparked,
            "parkedcalltimeout": self._on_unparked,
            "parkedcallgiveup": self._on_unparked,
            "rename": self._on_rename,
        }

    @classmethod
    def for_dialing(cls, ami: Any, dialing: Any, clock: Any, **kwargs: Any) -> CallTracker:
        """A tracker whose technologies and trunk come from the ``[dialing]`` section."""
        techs = {
            template.split("/", 1)[0]
            for template in (dialing.operator_channel, dialing.client_channel)
            if "/" in template
        }
        return cls(
            ami,
            clock=clock,
            party_techs=techs or {"PJSIP"},
            trunks=dialing.all_trunks,
            extension_tech=dialing.operator_channel.split("/", 1)[0],
            **kwargs,
        )

    # -- wiring ------------------------------------------------------------------

    def start(self) -> None:
        """Follow the AMI events; resync now if connected and after every reconnect."""
        self._unsubscribe.append(self.ami.subscribe(self._on_event))
        self._unsubscribe.append(self.ami.on_connect(lambda _ami: self.resync()))
        if getattr(self.ami, "connected", False):
            self.resync()

    def stop(self) -> None:
        """Stop following the AMI events."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def subscribe(self, callback: Callable[[CallEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every :class:`CallEvent`; returns a
        function that unsubscribes.  An exception in a callback is logged and
        does not stop the others."""
        entry = _Callback(callback)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    # -- queries -----------------------------------------------------------------

    def calls(self) -> list[TrackedCall]:
        """Every live call, oldest first."""
        return sorted(self._calls.values(), key=lambda c: (c.created, c.call_api_id))

    def call(self, call_api_id: str) -> TrackedCall | None:
        """The live call with this id, a former id of it, or its agi_app call id."""
        return (
            self._calls.get(call_api_id)
            or self._aliases.get(call_api_id)
            or self._by_call_id.get(call_api_id)
        )

    def leg(self, uniqueid: str) -> Leg | None:
        """The live channel with this Uniqueid."""
        return self._legs.get(uniqueid)

    def extension_calls(self, extension: str) -> list[TrackedCall]:
        """The live calls that ``extension``'s device takes part in, oldest first."""
        found: dict[str, TrackedCall] = {}
        for uid in self._ext_legs.get(extension, ()):
            leg = self._legs.get(uid)
            if leg is not None and leg.call is not None:
                found[leg.call.call_api_id] = leg.call
        return sorted(found.values(), key=lambda c: (c.created, c.call_api_id))

    def calls_of_extension(self, extension: str) -> list[dict[str, Any]]:
        """The ``call_list`` of ``GET /extension/{extension}/current_calls/``."""
        return [self.view(call, extension) for call in self.extension_calls(extension)]

    def leg_of(self, call: TrackedCall, extension: str) -> Leg | None:
        """``extension``'s channel in ``call`` (the one in a conversation first)."""
        legs = [leg for leg in call.legs.values() if leg.extension == extension]
        if not legs:
            return None
        legs.sort(key=lambda leg: (leg.spying_on is None, leg.bridge is not None, leg.created))
        return legs[-1]

    def peer_of(self, leg: Leg) -> Leg | None:
        """The party ``leg`` talks to (or is rung by, or is calling)."""
        call = leg.call
        if call is None:
            return None
        parties = [o for o in call.live_legs() if o is not leg and o.party]
        if not parties:
            return None
        if leg.bridge:
            for other in parties:
                if other.bridge == leg.bridge:
                    return other
        if leg.dialed_by:
            for other in parties:
                if other.uniqueid == leg.dialed_by:
                    return other
        for other in parties:
            if other.dialed_by == leg.uniqueid:
                return other
        if leg.spying_on:
            spied = self._legs.get(leg.spying_on)
            if spied is not None:
                return spied
        return parties[0]

    def extension_name(self, extension: str) -> str:
        """The extension's display name as its phone presents it (its own id
        until a call of it has shown one)."""
        return self._names.get(extension, extension)

    def is_trunk(self, endpoint: str) -> bool:
        """True for an outside line's endpoint."""
        return endpoint in self.trunks

    def direction(self, leg: Leg) -> str:
        """``in`` or ``out`` for ``leg`` (see :class:`CallEvent`)."""
        if leg.direction is not None:
            return leg.direction
        call_id = leg.call_id or (leg.call.call_id if leg.call else None)
        if leg.outside:
            return "in" if leg.inbound else "out"
        if leg.inbound:
            return "out"
        if leg.dialed:
            return "in"
        if call_id:
            # agi_app rings the operator first to call a client for them (the
            # channel carries the call id before the DialBegin that would mark
            # it originated: Asterisk may publish its ringing state first)
            return "out"
        return "in"

    def view(self, call: TrackedCall, extension: str | None) -> dict[str, Any]:
        """The ``call_mdl`` of ``call`` as seen by ``extension`` (CONTRACT 5)."""
        leg = self.leg_of(call, extension) if extension else None
        if leg is None:
            leg = next((o for o in call.live_legs() if o.party), None)
        if leg is None:
            return self._bare_view(call)
        direction = self.direction(leg)
        peer = self.peer_of(leg)
        own_ext = self._ext_info(leg.extension)
        peer_ext = self._ext_info(peer.extension) if peer is not None else None
        if direction == "in":
            caller_ext, called_ext = peer_ext, own_ext
            caller_num = _known(leg.connected_num) or (peer.caller_num if peer else None)
            caller_name = _known(leg.connected_name) or (peer.caller_name if peer else None)
            if leg.outside:
                caller_num, caller_name = _known(leg.caller_num), _known(leg.caller_name)
            called_number = leg.dial_exten or leg.extension or leg.first_exten
            called_did = self._did(leg, peer)
        else:
            caller_ext, called_ext = own_ext, peer_ext
            if leg.extension:
                caller_num = leg.extension
                caller_name = self.extension_name(leg.extension)
            else:
                caller_num, caller_name = _known(leg.connected_num), _known(leg.connected_name)
            called_number = self._dialed_number(leg, peer)
            called_did = None
        return {
            "call_api_id": call.call_api_id,
            "record_uuid": (call.call_id or call.recorded) if call.recorded else None,
            "call_flow": direction,
            "called_number": _known(called_number),
            "called_did": _known(called_did),
            "init_time_gmt": gmt(call.created),
            "answer_time_gmt": gmt(leg.talking if leg.spying_on is None else leg.answered),
            "caller_id_number": _known(caller_num),
            "caller_id_name": _known(caller_name),
            "caller_extension": caller_ext,
            "called_extension": called_ext,
            "real_call": leg.spying_on is None,
            # additions beyond the seed's fields
            "call_id": call.call_id,
            "state": self._state(leg, peer),
        }

    def _bare_view(self, call: TrackedCall) -> dict[str, Any]:
        return {
            "call_api_id": call.call_api_id,
            "record_uuid": None,
            "call_flow": "in",
            "called_number": None,
            "called_did": None,
            "init_time_gmt": gmt(call.created),
            "answer_time_gmt": None,
            "caller_id_number": None,
            "caller_id_name": None,
            "caller_extension": None,
            "called_extension": None,
            "real_call": False,
            "call_id": call.call_id,
            "state": "internal",
        }

    def _ext_info(self, extension: str | None) -> dict[str, str] | None:
        if not extension:
            return None
        return {"id": extension, "name": self.extension_name(extension)}

    def _did(self, leg: Leg, peer: Leg | None) -> str | None:
        """The outside number the caller dialled, when the call came from a trunk."""
        if peer is None or not peer.outside:
            return None
        if peer.inbound and peer.first_exten:
            return peer.first_exten
        return leg.dial_exten

    def _dialed_number(self, leg: Leg, peer: Leg | None) -> str | None:
        call = leg.call
        if call is not None:
            for other in call.live_legs():
                if other.dialed_by == leg.uniqueid and other.dial_string:
                    return _number_of(other.dial_string)
        if leg.inbound and leg.first_exten:
            return leg.first_exten
        if peer is not None:
            if peer.dial_string:
                return _number_of(peer.dial_string)
            if peer.extension:
                return peer.extension
            if peer.outside and _known(peer.caller_num):
                return peer.caller_num
        if leg.originated and _known(leg.caller_num):
            # Originate's CallerID: agi_app shows the client's number to the operator
            return leg.caller_num
        return None

    def _state(self, leg: Leg, peer: Leg | None) -> str:
        if leg.spying_on:
            return "listening"
        if peer is not None and peer.parked_at:
            return "parked"
        if leg.bridge and peer is not None and peer.bridge == leg.bridge:
            # (a call taken off hold stays at its agi-app-hold priority, bridged)
            return "talking"
        if (peer is not None and (peer.on_hold or peer.context == HOLD_CONTEXT)) or (
            leg.context == HOLD_CONTEXT
        ):
            return "hold"
        if leg.state in (STATE_RING, STATE_RINGING) or leg.answered is None:
            return "ringing"
        return "up"

    # -- events ------------------------------------------------------------------

    def _on_event(self, msg: Any) -> None:
        name = (msg.get("Event") or "").lower()
        handler = self._handlers.get(name)
        if handler is not None:
            handler(msg)
        elif msg.get("Uniqueid") and "ChannelState" in msg:
            leg = self._legs.get(msg["Uniqueid"])
            if leg is not None:
                self._update(leg, msg)

    def _on_newchannel(self, msg: Any) -> None:
        uid = msg.get("Uniqueid")
        if not uid:
            return
        leg = self._legs.get(uid)
        if leg is None:
            leg = self._add_leg(msg, "", self.clock.seconds())
            if leg.inbound and leg.party:
                self._emit("ringing", leg)
        else:
            self._update(leg, msg)

    def _on_dial_begin(self, msg: Any) -> None:
        dest = self._leg_from(msg, "Dest")
        if dest is None:
            return
        # The dial string ("number@endpoint") says nothing of what the
        # endpoint is: a request can route a call through any endpoint
        # (trunk=101), and 101 stays an extension.  Trunks come from the
        # configuration only.
        dial_string = msg.get("DialString") or ""
        dest.dial_string = dial_string or dest.dial_string
        caller = self._leg_from(msg, "") if msg.get("Uniqueid") else None
        if caller is None:
            dest.originated = not dest.dialed
            return
        dest.dialed, dest.originated = True, False
        dest.dialed_by = caller.uniqueid
        dest.dial_exten = _known(msg.get("Exten")) or dest.dial_exten
        self._merge_legs(caller, dest)

    def _on_dial_end(self, msg: Any) -> None:
        dest = self._leg_from(msg, "Dest")
        status = (msg.get("DialStatus") or "").upper()
        if dest is not None and status in _DIAL_STATUSES:
            dest.dial_status = status
        if msg.get("Uniqueid"):
            self._leg_from(msg, "")

    def _on_bridge_enter(self, msg: Any) -> None:
        leg = self._leg_from(msg, "")
        bridge = msg.get("BridgeUniqueid")
        if leg is None or not bridge:
            return
        leg.bridge = bridge
        members = self._bridges.setdefault(bridge, set())
        members.add(leg.uniqueid)
        for uid in list(members):
            other = self._legs.get(uid)
            if other is not None and other is not leg:
                self._merge_legs(leg, other)
        if len(members) < 2:
            return
        now = self.clock.seconds()
        for uid in sorted(members):
            member = self._legs.get(uid)
            if member is not None and member.talking is None:
                member.talking = now
                if member.party:
                    self._emit("answered", member)

    def _on_bridge_leave(self, msg: Any) -> None:
        uid = msg.get("Uniqueid") or ""
        bridge = msg.get("BridgeUniqueid")
        if bridge in self._bridges:
            self._bridges[bridge].discard(uid)
        leg = self._legs.get(uid)
        if leg is not None:
            if leg.bridge == bridge:
                leg.bridge = None
            self._update(leg, msg)

    def _on_bridge_destroy(self, msg: Any) -> None:
        self._bridges.pop(msg.get("BridgeUniqueid") or "", None)

    def _on_hangup(self, msg: Any) -> None:
        leg = self._legs.get(msg.get("Uniqueid") or "")
        if leg is None:
            return
        self._update(leg, msg)
        self._end_leg(leg, _int(msg.get("Cause"), 0) or None)

    def _on_moh(self, msg: Any, on: bool) -> None:
        leg = self._leg_from(msg, "")
        if leg is not None:
            leg.on_hold = on

    def _on_spy_start(self, msg: Any) -> None:
        spyer = self._leg_from(msg, "Spyer")
        spyee = self._leg_from(msg, "Spyee")
        if spyer is None or spyee is None:
            return
        spyer.spying_on = spyee.uniqueid
        self._merge_legs(spyee, spyer)
        if spyer.answered is None:
            spyer.answered = self.clock.seconds()
        if spyer.extension or spyer.outside:
            self._emit("answered", spyer)

    def _on_mixmonitor(self, msg: Any) -> None:
        leg = self._leg_from(msg, "")
        if leg is not None and leg.call is not None and leg.call.recorded is None:
            leg.call.recorded = leg.uniqueid

    def _on_parked(self, msg: Any) -> None:
        leg = self._leg_from(msg, "Parkee")
        if leg is not None:
            leg.parked_at = msg.get("ParkingSpace") or "?"

    def _on_unparked(self, msg: Any) -> None:
        leg = self._legs.get(msg.get("ParkeeUniqueid") or "")
        if leg is not None:
            leg.parked_at = None

    def _on_rename(self, msg: Any) -> None:
        leg = self._legs.get(msg.get("Uniqueid") or "")
        new = msg.get("Newname")
        if leg is not None and new:
            leg.name = new
            self._classify(leg)

    # -- channels ----------------------------------------------------------------

    def _leg_from(self, msg: Any, prefix: str) -> Leg | None:
        """The leg an event's ``prefix``-ed channel fields describe, created
        if unknown (an event may be the first news of a channel)."""
        uid = msg.get(f"{prefix}Uniqueid")
        if not uid:
            return None
        leg = self._legs.get(uid)
        if leg is None:
            if not msg.get(f"{prefix}Channel"):
                return None
            leg = self._add_leg(msg, prefix, self.clock.seconds())
        else:
            self._update(leg, msg, prefix)
        return leg

    def _add_leg(self, msg: Any, prefix: str, created: float) -> Leg:
        uid = msg[f"{prefix}Uniqueid"]
        leg = Leg(
            uniqueid=uid,
            name=msg.get(f"{prefix}Channel") or "",
            linkedid=msg.get(f"{prefix}Linkedid") or uid,
            created=created,
        )
        state = _int(msg.get(f"{prefix}ChannelState"))
        leg.inbound = state == STATE_RING
        self._classify(leg)
        self._legs[uid] = leg
        if leg.extension:
            self._ext_legs.setdefault(leg.extension, set()).add(uid)
        self._update(leg, msg, prefix, place=False)
        if leg.inbound:
            leg.first_exten = _known(leg.exten)
            if leg.extension and _known(leg.caller_name):
                self._names[leg.extension] = leg.caller_name  # type: ignore[assignment]
        self._place(leg)
        return leg

    def _classify(self, leg: Leg) -> None:
        tech, sep, rest = leg.name.partition("/")
        old = leg.extension
        leg.extension, leg.outside, leg.internal = None, False, True
        if sep and tech in self.party_techs and ";" not in rest:
            endpoint = rest.rsplit("-", 1)[0] if "-" in rest else rest
            leg.internal = False
            if endpoint in self.trunks:
                leg.outside = True
            elif tech == self.extension_tech and endpoint:
                leg.extension = endpoint
            else:
                leg.outside = True
        if old != leg.extension:
            if old and old in self._ext_legs:
                self._ext_legs[old].discard(leg.uniqueid)
            if leg.extension and leg.uniqueid in self._legs:
                self._ext_legs.setdefault(leg.extension, set()).add(leg.uniqueid)

    def _update(self, leg: Leg, msg: Any, prefix: str = "", place: bool = True) -> None:
        """Apply the channel snapshot of an event (``prefix``: Dest, Spyer...)."""
        get = msg.get
        keys = _SNAPSHOT_KEYS.get(prefix)
        if keys is None:
            keys = _SNAPSHOT_KEYS[prefix] = tuple(f"{prefix}{key}" for key in _SNAPSHOT)
        k_channel, k_state, k_num, k_name, k_cnum, k_cname, k_context, k_exten, k_linked = keys
        name = get(k_channel)
        if name and name != leg.name:
            leg.name = name
            self._classify(leg)
        state = get(k_state)
        if state not in (None, ""):
            new_state = _int(state, leg.state)
            if new_state == STATE_UP and leg.answered is None:
                leg.answered = self.clock.seconds()
            leg.state = new_state
        value = get(k_num)
        if value is not None:
            leg.caller_num = value
        value = get(k_name)
        if value is not None:
            leg.caller_name = value
        value = get(k_cnum)
        if value is not None:
            leg.connected_num = value
        value = get(k_cname)
        if value is not None:
            leg.connected_name = value
        context = get(k_context)
        if context is not None:
            leg.context = context
        exten = get(k_exten)
        if exten is not None:
            leg.exten = exten
        if not leg.inbound and leg.extension and leg.dialed_by and _known(leg.caller_name):
            # a rung extension's channel presents the endpoint's own caller ID
            self._names.setdefault(leg.extension, leg.caller_name)  # type: ignore[arg-type]
        call_id = _variables(msg, prefix).get(CALL_ID_VAR)
        if call_id and call_id != leg.call_id:
            leg.call_id = call_id
            if place and leg.call is not None:
                self._join_call_id(leg)
        linkedid = get(k_linked)
        if linkedid and linkedid != leg.linkedid:
            leg.linkedid = linkedid
            if place and leg.call is not None:
                self._join_linkedid(leg)
        if (
            place
            and leg.party
            and "ringing" not in leg.emitted
            and leg.state in (STATE_RINGING, STATE_UP)
        ):
            self._emit("ringing", leg)

    # -- grouping ----------------------------------------------------------------

    def _place(self, leg: Leg) -> None:
        """Put a new leg into its call (by call id, linkedid, Local sibling) or a new one."""
        call = None
        if leg.call_id:
            call = self._by_call_id.get(leg.call_id)
        if call is None:
            call = self._by_linkedid.get(leg.linkedid)
        if call is None and ";" in leg.name:
            sibling = leg.name.rsplit(";", 1)[0]
            for other in self._legs.values():
                if other is not leg and other.call is not None and other.name.startswith(
                    sibling + ";"
                ):
                    call = other.call
                    break
        if call is None:
            call_api_id = leg.call_id or leg.linkedid
            if call_api_id in self._calls:
                call_api_id = leg.uniqueid
            call = TrackedCall(call_api_id=call_api_id, created=leg.created)
            self._calls[call_api_id] = call
        self._attach(call, leg)

    def _attach(self, call: TrackedCall, leg: Leg) -> None:
        leg.call = call
        call.legs[leg.uniqueid] = leg
        call.created = min(call.created, leg.created)
        call.linkedids.add(leg.linkedid)
        self._by_linkedid[leg.linkedid] = call
        if leg.call_id:
            if call.call_id is None:
                self._adopt_call_id(call, leg.call_id)
            elif leg.call_id not in self._by_call_id:
                call.call_ids.add(leg.call_id)
                self._by_call_id[leg.call_id] = call

    def _join_call_id(self, leg: Leg) -> None:
        assert leg.call is not None and leg.call_id is not None
        other = self._by_call_id.get(leg.call_id)
        if other is None:
            if leg.call.call_id is None:
                self._adopt_call_id(leg.call, leg.call_id)
            else:
                leg.call.call_ids.add(leg.call_id)
                self._by_call_id[leg.call_id] = leg.call
        elif other is not leg.call:
            self._merge(leg.call, other)

    def _join_linkedid(self, leg: Leg) -> None:
        assert leg.call is not None
        other = self._by_linkedid.get(leg.linkedid)
        if other is None:
            leg.call.linkedids.add(leg.linkedid)
            self._by_linkedid[leg.linkedid] = leg.call
        elif other is not leg.call:
            self._merge(leg.call, other)

    def _adopt_call_id(self, call: TrackedCall, call_id: str) -> None:
        """A call learns its agi_app call id (the variable is set after the
        channel is created): the call id becomes its id, the old one an alias."""
        call.call_id = call_id
        call.call_ids.add(call_id)
        self._by_call_id[call_id] = call
        if call.call_api_id != call_id and call_id not in self._calls:
            del self._calls[call.call_api_id]
            call.aliases.add(call.call_api_id)
            self._aliases[call.call_api_id] = call
            call.call_api_id = call_id
            self._calls[call_id] = call

    def _merge_legs(self, a: Leg, b: Leg) -> None:
        if a.call is not None and b.call is not None and a.call is not b.call:
            self._merge(a.call, b.call)

    def _merge(self, a: TrackedCall, b: TrackedCall) -> TrackedCall:
        """Join two calls; the one with an agi_app call id (else the older) survives."""
        if (a.call_id is None) != (b.call_id is None):
            keep, gone = (a, b) if a.call_id is not None else (b, a)
        else:
            keep, gone = (a, b) if (a.created, a.call_api_id) <= (b.created, b.call_api_id) else (
                b,
                a,
            )
        for leg in gone.legs.values():
            leg.call = keep
            keep.legs[leg.uniqueid] = leg
        keep.created = min(keep.created, gone.created)
        keep.linkedids |= gone.linkedids
        for linkedid in gone.linkedids:
            self._by_linkedid[linkedid] = keep
        keep.call_ids |= gone.call_ids
        for call_id in gone.call_ids:
            self._by_call_id[call_id] = keep
        keep.recorded = keep.recorded or gone.recorded
        keep.aliases |= gone.aliases | {gone.call_api_id}
        for alias in keep.aliases:
            self._aliases[alias] = keep
        self._calls.pop(gone.call_api_id, None)
        return keep

    def _end_leg(self, leg: Leg, cause: int | None) -> None:
        if leg.party:
            if "ringing" not in leg.emitted:
                self._emit("ringing", leg)
            self._emit("hungup", leg, cause=cause)
        self._legs.pop(leg.uniqueid, None)
        if leg.extension and leg.extension in self._ext_legs:
            self._ext_legs[leg.extension].discard(leg.uniqueid)
            if not self._ext_legs[leg.extension]:
                del self._ext_legs[leg.extension]
        if leg.bridge in self._bridges:
            self._bridges[leg.bridge].discard(leg.uniqueid)
        call = leg.call
        if call is None:
            return
        call.legs.pop(leg.uniqueid, None)
        if call.legs:
            return
        self._calls.pop(call.call_api_id, None)
        for linkedid in call.linkedids:
            if self._by_linkedid.get(linkedid) is call:
                del self._by_linkedid[linkedid]
        for call_id in call.call_ids:
            if self._by_call_id.get(call_id) is call:
                del self._by_call_id[call_id]
        for alias in call.aliases:
            if self._aliases.get(alias) is call:
                del self._aliases[alias]

    # -- resync ------------------------------------------------------------------

    def resync(self) -> None:
        """Rebuild from ``ami.channels`` (just refreshed by CoreShowChannels):
        end the channels that are gone, add the ones that are new."""
        now = self.clock.seconds()
        snapshot = dict(self.ami.channels)
        for uid in list(self._legs):
            if uid not in snapshot:
                self._end_leg(self._legs[uid], None)
        for uid, msg in snapshot.items():
            leg = self._legs.get(uid)
            if leg is None:
                created = now - _duration(msg.get("Duration"))
                leg = self._add_leg(msg, "", created)
                # joined mid-call: no "ringing" for it, it started while we were away
                leg.emitted.add("ringing")
                # Who called whom is not in the snapshot; the application
                # running tells: a dialled channel runs "AppDial", agi_app's
                # own first legs carry the call id, any other channel placed
                # its call itself.
                if (msg.get("Application") or "") == "AppDial":
                    leg.dialed, leg.inbound = True, False
                elif leg.call_id:
                    leg.originated, leg.inbound = True, False
                else:
                    leg.inbound = True
                    leg.first_exten = leg.first_exten or _known(leg.exten)
                if leg.state == STATE_UP:
                    leg.answered = leg.answered or created
            else:
                self._update(leg, msg)
            bridge = msg.get("BridgeId") or None
            if bridge:
                leg.bridge = bridge
                self._bridges.setdefault(bridge, set()).add(uid)
        for members in self._bridges.values():
            legs = [self._legs[u] for u in sorted(members) if u in self._legs]
            for other in legs[1:]:
                self._merge_legs(legs[0], other)
            if len(legs) >= 2:
                for member in legs:
                    if member.talking is None:
                        member.talking = member.answered or now
                        member.emitted.add("answered")
        log.debug("call tracker resynced: {legs} channels in {calls} calls",
                  legs=len(self._legs), calls=len(self._calls))

    # -- emitting ----------------------------------------------------------------

    def _emit(self, kind: str, leg: Leg, cause: int | None = None) -> None:
        if kind in leg.emitted or leg.call is None:
            return
        leg.emitted.add(kind)
        if leg.direction is None and (leg.call_id or leg.outside or leg.inbound or leg.dialed):
            # decided for good only once the leg says what it is
            leg.direction = self.direction(leg)
        if not self._subscribers:
            return
        now = self.clock.seconds()
        status = duration = None
        if kind == "hungup":
            status = self._hangup_status(leg, cause)
            duration = max(0.0, now - leg.talking) if leg.talking is not None else 0.0
        event = CallEvent(
            kind=kind,
            call_api_id=leg.call.call_api_id,
            call_id=leg.call.call_id,
            uniqueid=leg.uniqueid,
            channel=leg.name,
            extension=leg.extension,
            direction=leg.direction or self.direction(leg),
            time=now,
            call=self.view(leg.call, leg.extension),
            status=status,
            duration=duration,
            cause=cause,
        )
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.failure("call event subscriber failed on {kind}", kind=kind)

    @staticmethod
    def _hangup_status(leg: Leg, cause: int | None) -> str:
        if leg.talking is not None or (leg.spying_on and leg.answered is not None):
            return "ANSWER"
        if leg.dial_status and leg.dial_status != "ANSWER":
            return leg.dial_status
        if cause in _CAUSE_STATUS:
            return _CAUSE_STATUS[cause]  # type: ignore[index]
        if leg.answered is not None:
            return "ANSWER"
        return "CANCEL"


class _Callback:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[CallEvent], object]):
        self.callback = callback

    def __call__(self, event: CallEvent) -> object:
        return self.callback(event)


def _number_of(dial_string: str) -> str:
    """The number of a Dial string: ``380501234567@pstn`` -> ``380501234567``."""
    number = dial_string.split("@", 1)[0]
    return number.rsplit("/", 1)[-1]
