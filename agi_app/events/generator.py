"""CRM events from the live call tracker (seed 004 generation rules).

The tracker reports every leg of every call (:class:`agi_app.live.tracker.CallEvent`:
``ringing``, ``answered``, ``hungup``, with the extension whose device the
leg is and the direction seen from it).  :func:`crm_event` turns one of them
into the event of one extension:

==========================  ==============================================
leg of extension X          event of X
==========================  ==============================================
ringing, direction ``in``   ``dial-in`` (X's phone rings: a call from the
                            trunk, another extension, a queue)
ringing, direction ``out``  ``dial-out`` (X calls; a click-to-call or a
                            callback placed for X counts as X calling)
answered                    ``answer``
hungup                      ``hangup`` with CallStatus, Duration, RecordURL
==========================  ==============================================

The hangup that ends a call agi_app placed and call control transferred
(its history has ``TRANSFER``) also names the extension the call ended
with (``HangupExtension``) and the talk time of the whole call, from the
client's answer (``TotalDuration``); an extension that handed the call over
gets neither.

and a leg of an outside line dialled from a call that came in from outside
for extension X (forwarding by incoming call rules) gives X a ``dial-out``
with ``Transfered: yes``.

A call agi_app placed for an operator that came and went while no agi_app
(or no AMI link) watched -- the tracker never saw a leg of it, the lifecycle
closed it after the restart or the login -- still gives the operator the
``hangup`` of the leg that answered (:meth:`EventGenerator.status_logged`).

A ``record`` event (CONTRACT section 10) is not a leg's: it comes when a
call's recording is complete (its size and duration stored), for each
extension that answered in the call (and the operator of a call agi_app
placed for one), with the fields of that extension's ``answer`` and
``RecordURL``, a signed link that works without an API key
(:mod:`agi_app.links`), ``RecordID`` and ``Duration`` (seconds of audio).

Seed 004's special cases follow from these rules: a queue agent's phone is
rung (dial-in), answers (answer) and hangs up (hangup); a caller who only
reaches an IVR or waits in a queue has no extension leg, so its events are
those of the extensions it reaches.  A call of an extension to itself (the
caller and the called extension both X, as a callback "on behalf of 200
from 200" would look in a PBX that rings the owner first) gives X no events.

:class:`EventGenerator` subscribes to the tracker and publishes the events
through the :class:`~agi_app.events.service.EventService`, adding
``OrderID``/``ExternalKey`` of calls agi_app placed and ``RecordURL`` of
recorded ones from the store, and for an inbound call the CRM was asked
about (:mod:`agi_app.inbound`) the caller's ``name`` (also as
``CallerIDName``) and ``crm_url``.  Events are handled one after another, so
their EventIDs follow the order the tracker reported them in.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import PICKUP_UNSEEN
from agi_app.events.service import EventService
from agi_app.times import parse_time

__all__ = [
    "CallInfo",
    "EventGenerator",
    "LegMemory",
    "crm_event",
    "ends_call",
    "operator_first_fields",
]

log = Logger(namespace="agi_app.events")

_EXTENSION = re.compile(r"^[A-Za-z0-9_-]{1,32}$", re.ASCII)
_KIND_TYPE = {"answered": "answer", "hungup": "hangup"}


def _ext_id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value else None


def crm_event(event: Any, leg: Any = None) -> tuple[str, str, dict[str, Any]] | None:
    """``(extension, event_type, fields)`` for a tracker event, or None when
    it gives no extension an event.  ``leg`` is the tracker's
    :class:`~agi_app.live.tracker.Leg` of the event (for forwarding outside).

    ``fields`` are the CONTRACT 6 fields after EventType/EventID/EventTime,
    except ``OrderID``, ``ExternalKey`` and ``RecordURL`` (from the store)."""
    call = event.call or {}
    extension = event.extension
    transferred = False
    if not extension:
        extension = _forwarded_for(event, leg)
        if extension is None:
            return None
        transferred = True
    if event.kind == "ringing":
        event_type = "dial-in" if event.direction == "in" else "dial-out"
    else:
        event_type = _KIND_TYPE.get(event.kind)
        if event_type is None:
            return None
    caller_ext = _ext_id(call.get("caller_extension"))
    called_ext = _ext_id(call.get("called_extension"))
    if transferred:
        caller_ext, called_ext = extension, None
    elif caller_ext == extension and called_ext == extension:
        return None  # a call of an extension to itself: no self events
    fields: dict[str, Any] = {
        "CallID": event.call_id or event.call_api_id,
        "CallAPIID": event.call_api_id,
        "CallFlow": "out" if transferred else (call.get("call_flow") or event.direction),
        "CallerIDNum": call.get("caller_id_number"),
        "CallerIDName": call.get("caller_id_name"),
        "CalledNumber": call.get("called_number"),
        "CalledDID": call.get("called_did"),
        "CallerExtension": caller_ext,
        "CalledExtension": called_ext,
    }
    if transferred:
        if leg is not None and getattr(leg, "dial_string", None):
            fields["CalledNumber"] = leg.dial_string.split("@", 1)[0].rsplit("/", 1)[-1]
        fields["Transfered"] = "yes"
    if event_type == "hangup":
        fields["CallStatus"] = event.status or "CANCEL"
        fields["Duration"] = str(int(round(event.duration or 0)))
    return extension, event_type, fields


def ends_call(leg: Any, handed_over: Callable[[Any], bool] | None = None) -> bool:
    """Whether the hangup of this extension's leg ends its call for the
    extensions: no other extension takes part in it any more, and the leg
    did not hand the call over (``handed_over``, call control's rule)."""
    if leg is None or leg.call is None:
        return False
    if handed_over is not None and handed_over(leg):
        return False
    return not any(
        other is not leg and other.extension and other.party
        for other in leg.call.legs.values()
    )


def _forwarded_for(event: Any, leg: Any) -> str | None:
    """The extension whose incoming call rules sent a call from outside to
    this outside line (a ``ringing``/``out`` leg dialled at the extension's
    number by an inbound outside leg), or None."""
    if leg is None or event.kind != "ringing" or event.direction != "out":
        return None
    if not getattr(leg, "outside", False) or not getattr(leg, "dialed", False):
        return None
    exten = getattr(leg, "dial_exten", None)
    caller = getattr(leg, "call", None)
    caller_leg = None
    if caller is not None and leg.dialed_by:
        caller_leg = caller.legs.get(leg.dialed_by)
    if caller_leg is None or not (caller_leg.outside and caller_leg.inbound):
        return None
    if not exten or not _EXTENSION.match(exten):
        return None
    return exten


#: calls agi_app places by ringing an extension first, for it to call out
OPERATOR_FIRST = frozenset({"makeCall", "extToPhone", "callback"})
_NO_INFO = {
    "order_id": None,
    "external_key": None,
    "operator": None,
    "phone": None,
    "record_url": None,
    "name": None,
    "crm_url": None,
}


def operator_first_fields(fields: dict[str, Any], extension: str, info: Mapping[str, Any]) -> bool:
    """In a call agi_app placed for ``extension`` (rung first, then the
    client dialled), the extension calls out, whatever the PBX's events made
    of its leg at first: set the fields so.  True when they were changed."""
    if info.get("operator") != extension:
        return False
    fields.update(
        CallFlow="out",
        CallerExtension=extension,
        CalledExtension=None,
        CallerIDNum=extension,
        CalledNumber=info.get("phone") or fields.get("CalledNumber"),
        CalledDID=None,
    )
    if fields.get("CallerIDName") is None or fields.get("CallerIDName") == info.get("phone"):
        fields["CallerIDName"] = extension
    return True


class CallInfo:
    """What the store knows of agi_app's calls: order, external key, the
    recording link, and the caller's name and CRM link of an inbound call
    looked up in the CRM; cached for the calls seen lately."""

    def __init__(self, store: Any, *, public_url: str, keep: int = 2048):
        self._store = store
        self._public_url = public_url.rstrip("/")
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._keep = keep

    async def get(self, call_id: str | None, *, refresh: bool = False) -> dict[str, Any]:
        """``{"order_id", "external_key", "operator", "phone", "record_url",
        "name", "crm_url"}`` of an agi_app call (all None for a call agi_app
        did not place).  ``refresh`` reads the recording again (it may start
        after the call's first events)."""
        if not call_id:
            return dict(_NO_INFO)
        info = self._cache.get(call_id)
        if info is None or refresh:
            call = await self._store.get_call(call_id)
            records = await self._store.recordings_of_call(call_id) if call else []
            params = (call.get("params") or {}) if call else {}
            info = {
                "order_id": call.get("order_id") if call else None,
                "external_key": call.get("external_key") if call else None,
                # the extension rung first for it, in an operator-first call
                "operator": (
                    call.get("sip")
                    if call
                    and call.get("kind") in OPERATOR_FIRST
                    and not params.get("first_is_phone")
                    else None
                ),
                "phone": call.get("phone") if call else None,
                "record_url": (
                    f"{self._public_url}/records/{records[0]['record_id']}" if records else None
                ),
                # what the CRM lookup of an inbound call said (agi_app.inbound)
                "name": params.get("name") if isinstance(params.get("name"), str) else None,
                "crm_url": (
                    params.get("crm_url") if isinstance(params.get("crm_url"), str) else None
                ),
            }
            self._cache[call_id] = info
            self._cache.move_to_end(call_id)
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return info

    async def transfer(self, call_id: str | None) -> tuple[bool, float | None]:
        """``(transferred, answered_at)`` of an agi_app call: whether call
        control handed it over (a ``TRANSFER`` entry), and when the client
        answered (``CLIENT_PICKUP``; None if not, or not seen)."""
        if not call_id:
            return False, None
        entries = await self._store.statuses(call_id)
        transferred = any(e["status"] == st.TRANSFER for e in entries)
        pickup = next((e for e in entries if e["status"] == st.CLIENT_PICKUP), None)
        if pickup is None or pickup.get("detail") == PICKUP_UNSEEN:
            return transferred, None
        return transferred, parse_time(pickup["time"])


#: the fields that describe the parties of a leg (kept from its last event
#: before the hangup, when the other party may be gone already)
PARTY_FIELDS = (
    "CallFlow",
    "CallerIDNum",
    "CallerIDName",
    "CalledNumber",
    "CalledDID",
    "CallerExtension",
    "CalledExtension",
)


class LegMemory:
    """The last thing seen of each live leg, by uniqueid, bounded."""

    def __init__(self, keep: int = 10_000):
        self._seen: OrderedDict[str, Any] = OrderedDict()
        self._keep = keep

    def remember(self, uniqueid: str, value: Any) -> None:
        """Keep ``value`` for the leg."""
        self._seen[uniqueid] = value
        self._seen.move_to_end(uniqueid)
        while len(self._seen) > self._keep:
            self._seen.popitem(last=False)

    def forget(self, uniqueid: str) -> Any:
        """What was kept for the leg (None), dropping it."""
        return self._seen.pop(uniqueid, None)

    def get(self, uniqueid: str) -> Any:
        """What is kept for the leg (None), keeping it."""
        return self._seen.get(uniqueid)

    def __len__(self) -> int:
        return len(self._seen)


class EventGenerator:
    """Publishes the CRM events of every call the tracker reports, and the
    ``record`` event of every completed recording.

    :param tracker: a :class:`~agi_app.live.tracker.CallTracker` (``subscribe``, ``leg``)
    :param events: the :class:`EventService` that queues them
    :param info: where OrderID/ExternalKey/RecordURL come from
    :param record_link: the signed link of a recording by record_id (the
        ``RecordURL`` of ``record`` events); None: no ``record`` events
    :param handed_over: whether a leg handed its call over to another party
        (:func:`agi_app.live.control.handed_over`): its hangup does not end
        the call
    """

    def __init__(
        self,
        tracker: Any,
        events: EventService,
        info: CallInfo,
        record_link: Callable[[int], str] | None = None,
        *,
        handed_over: Callable[[Any], bool] | None = None,
    ):
        self._tracker = tracker
        self._events = events
        self._info = info
        self._handed_over = handed_over
        self._record_link = record_link
        self._unsubscribe: Callable[[], object] | None = None
        self._tail: defer.Deferred = defer.succeed(None)
        self._legs = LegMemory()
        # call id -> {extension: the party fields of its answer}, for the
        # record event that comes once the call (and its recording) is over
        self._answered = LegMemory(keep=2048)
        # agi_app call ids the tracker reported a leg of, until the call's
        # final status (see status_logged); the cap bounds the calls that
        # never reach one here (another node's, or closed while away)
        self._seen_calls = LegMemory(keep=10_000)
        # the calls whose final status came lately: a leg's hangup after it
        # (the operator's channel hangs up once the script logged FINISH)
        # must not bring the call back into _seen_calls, where nothing would
        # ever let go of it again
        self._finished = LegMemory(keep=2048)
        #: events handed to the service (for tests and the benchmark)
        self.published = 0

    def start(self) -> None:
        """Follow the tracker."""
        self._unsubscribe = self._tracker.subscribe(self.on_call_event)

    def stop(self) -> None:
        """Stop following the tracker."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def idle(self) -> defer.Deferred:
        """Fires once every event reported so far has been queued."""
        d: defer.Deferred = defer.Deferred()
        self._tail.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def on_call_event(self, event: Any) -> None:
        """The tracker's callback: the leg's event, if any, is queued after
        the ones before it."""
        leg = self._tracker.leg(event.uniqueid) if hasattr(self._tracker, "leg") else None
        if event.call_id and (event.kind != "hungup" or self._finished.get(event.call_id) is None):
            # (a leg first seen at its hangup, before the call's final status
            # -- agi_app restarted meanwhile -- counts as seen: its hangup
            # event was sent, status_logged must not send another)
            self._seen_calls.remember(event.call_id, True)
        found = crm_event(event, leg)
        if found is None:
            return
        extension, event_type, fields = found
        # At the hangup the other party is often gone already: the parties
        # are those the leg's last event saw.
        if event_type == "hangup":
            before = self._legs.forget(event.uniqueid)
            if before is not None:
                for name in PARTY_FIELDS:
                    fields[name] = before.get(name)
        elif "Transfered" not in fields:
            self._legs.remember(event.uniqueid, {n: fields.get(n) for n in PARTY_FIELDS})
        if event_type == "answer" and event.call_id:
            answered = self._answered.forget(event.call_id) or {}
            answered[extension] = {n: fields.get(n) for n in PARTY_FIELDS}
            self._answered.remember(event.call_id, answered)
        candidates = {event_type}
        if event_type == "dial-in" and event.call_id:
            # It may be the operator's leg of a call agi_app placed, which
            # the PBX's first events can show as incoming: _publish decides.
            candidates.add("dial-out")
        if not any(self._events.wants(extension, t) for t in candidates):
            return
        when = event.time
        # decided now: by the time it is published the call has moved on
        last = event_type == "hangup" and ends_call(leg, self._handed_over)
        self._tail.addCallback(
            lambda _: defer.ensureDeferred(
                self._publish(extension, event_type, fields, event.call_id, when, last=last)
            )
        )
        self._tail.addErrback(
            lambda f: log.failure("event {type} of {ext} lost", f, type=event_type, ext=extension)
        )

    async def _publish(
        self,
        extension: str,
        event_type: str,
        fields: dict[str, Any],
        call_id: str | None,
        when: float,
        *,
        last: bool = False,
    ) -> None:
        info = await self._info.get(call_id, refresh=event_type == "hangup")
        fields = dict(fields)
        if operator_first_fields(fields, extension, info) and event_type == "dial-in":
            event_type = "dial-out"
        if not self._events.wants(extension, event_type):
            return
        fields["OrderID"] = info["order_id"]
        fields["ExternalKey"] = info["external_key"]
        if info.get("name"):
            # the CRM's name for the caller of an inbound call it was asked about
            fields["CallerIDName"] = fields["name"] = info["name"]
        if info.get("crm_url"):
            fields["crm_url"] = info["crm_url"]
        if event_type == "hangup" and info["record_url"]:
            fields["RecordURL"] = info["record_url"]
        if last and call_id:
            transferred, answered_at = await self._info.transfer(call_id)
            if transferred:
                fields["HangupExtension"] = extension
                if answered_at is not None:
                    fields["TotalDuration"] = str(int(round(max(0.0, when - answered_at))))
        await self._events.publish(extension, event_type, fields, when=when)
        self.published += 1

    # -- calls that ended unseen ----------------------------------------------------

    def status_logged(self, logged: Any) -> None:
        """The lifecycle's observer (:attr:`Lifecycle.on_status`): a call
        agi_app placed for an operator reached its final status, its
        operator had answered, and the tracker never reported a leg of it
        -- it came and went while no agi_app (or no AMI link) watched, and
        the lifecycle closed it from what the store, the channels and the
        recording tell.  The operator still gets the ``hangup`` of that leg
        (CallStatus ANSWER, Duration the talk time when known, else 0); its
        ``dial-out`` and ``answer`` are not made up."""
        call = logged.call
        if logged.entry.get("status") not in st.FINAL:
            return
        # The one moment the memory of the call is asked for: let go of it
        # (kept until the last 10,000 calls pushed it out, it held about 1.4
        # MiB of ended calls, filling for the first 10,000 calls).
        seen = self._seen_calls.forget(call.call_id) is not None
        self._finished.remember(call.call_id, True)
        if (
            seen
            or call.kind not in st.OPERATOR_FIRST_KINDS
            or not call.reached(st.OPERATOR_PICKUP)
            or self._tracker.call(call.call_id) is not None
        ):
            return
        when = parse_time(logged.entry.get("time") or "")
        talk = logged.talk_seconds
        self._tail.addCallback(
            lambda _: defer.ensureDeferred(self._publish_unseen_hangup(call.call_id, when, talk))
        )
        self._tail.addErrback(
            lambda f: log.failure("hangup of {call_id} lost", f, call_id=call.call_id)
        )

    async def _publish_unseen_hangup(
        self, call_id: str, when: float | None, talk: float | None
    ) -> None:
        info = await self._info.get(call_id, refresh=True)
        extension = info["operator"]
        if not extension or not self._events.wants(extension, "hangup"):
            return
        fields: dict[str, Any] = {"CallID": call_id, "CallAPIID": call_id}
        operator_first_fields(fields, extension, info)
        fields["OrderID"] = info["order_id"]
        fields["ExternalKey"] = info["external_key"]
        fields["CallStatus"] = "ANSWER"
        fields["Duration"] = str(int(round(talk or 0)))
        fields["RecordURL"] = info["record_url"]
        await self._events.publish(extension, "hangup", fields, when=when)
        self.published += 1

    # -- record events ------------------------------------------------------------

    def recording_complete(self, recording: Mapping[str, Any]) -> None:
        """A recording's size and duration are stored (the
        :class:`~agi_app.calls.recording.Recorder`'s callback): queue its
        ``record`` event for the extensions of the call, after the events
        before it."""
        if self._record_link is None or not recording.get("call_id"):
            return
        rec = dict(recording)
        self._tail.addCallback(lambda _: defer.ensureDeferred(self._publish_record(rec)))
        self._tail.addErrback(
            lambda f: log.failure("record event of {call_id} lost", f, call_id=rec["call_id"])
        )

    async def _publish_record(self, rec: dict[str, Any]) -> None:
        assert self._record_link is not None
        call_id = rec["call_id"]
        # (kept: a transferred call may be recorded again)
        answered = self._answered.get(call_id) or {}
        info = await self._info.get(call_id)
        parties = dict(answered)
        if info["operator"] and info["operator"] not in parties:
            # (answered before a restart: what the store says of the call)
            parties[info["operator"]] = {"CallFlow": "out"}
        for extension, party in parties.items():
            if not self._events.wants(extension, "record"):
                continue
            fields: dict[str, Any] = {"CallID": call_id, "CallAPIID": call_id, **party}
            operator_first_fields(fields, extension, info)
            fields["OrderID"] = info["order_id"]
            fields["ExternalKey"] = info["external_key"]
            fields["RecordID"] = rec["record_id"]
            fields["RecordURL"] = self._record_link(rec["record_id"])
            if rec.get("duration") is not None:
                fields["Duration"] = str(int(round(rec["duration"])))
            await self._events.publish(extension, "record", fields)
            self.published += 1
