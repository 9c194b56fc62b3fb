"""Missed calls: inbound calls nobody answered.

:class:`MissedCalls` follows the live call tracker (every call on the PBX,
also those agi_app did not place): a call whose caller came in through a
trunk is *missed* when the caller's channel ends without ever having been
connected to anyone -- no extension answered, and it was not forwarded to a
number that answered.  Whether extensions rang does not matter (nobody
online is the commonest miss); what does, for a call agi_app itself
received through an IVR menu (``[agi-app-ivr]``: the call is in the call
log), is whether the caller asked for someone: a call that stayed in the
menus without a connection being tried (no ``OPERATOR_CALLTO``) is one the
menus served, not a missed one.

Each missed call is stored (``/api/missedCalls``), sent as the ``missed``
webhook to the extensions it rang and to ``[inbound] group``, and handed to
``on_missed`` (the callback scheduler, :mod:`agi_app.calls.callback`).  It
stays *open* until someone gets through to the caller: any later call with
the number -- in or out, agi_app's or not -- whose outside party was
connected marks every open missed call of that number handled, with that
call's id as ``called_back``.

A call that began while the AMI link was down (or before agi_app started)
is not seen come in, and not reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from agi_app.calls import statuses as st
from agi_app.times import iso_time
from agi_app.validation import PHONE

__all__ = ["EVENT_TYPE", "MissedCalls", "phone_variants"]

log = Logger(namespace="agi_app.calls.missed")

#: the webhook event type of a missed call
EVENT_TYPE = "missed"


def phone_variants(number: str) -> tuple[str, str]:
    """The two spellings of one number, without and with ``+`` (callers
    show up either way)."""
    bare = number.lstrip("+")
    return bare, f"+{bare}"


def _phone(value: str | None) -> str | None:
    """A caller ID number that is a phone number (CONTRACT 3), or None."""
    if value and PHONE.match(value):
        return value
    return None


@dataclass
class _Caller:
    """An inbound caller being followed (by the Uniqueid of its channel)."""

    uniqueid: str
    came_in: float
    phone: str | None
    caller_num: str | None
    caller_name: str | None
    did: str | None
    rung: list[str] = field(default_factory=list)
    answered: bool = False


class MissedCalls:
    """Finds missed calls in the tracker's events and marks them handled.

    :param tracker: the :class:`~agi_app.live.tracker.CallTracker`
    :param store: the :class:`~agi_app.store.Store`
    :param clock: an ``IReactorTime``
    :param events: the :class:`~agi_app.events.service.EventService`
        (``wants``/``publish``), or None: no webhooks
    :param group: ``[inbound] group``: extensions that get every ``missed`` webhook
    :param on_missed: called with each stored missed call
    :param pbx: the PBX's name
    """

    def __init__(
        self,
        *,
        tracker: Any,
        store: Any,
        clock: Any,
        events: Any = None,
        group: Iterable[str] = (),
        on_missed: Callable[[dict[str, Any]], object] | None = None,
        pbx: str = "default",
    ):
        self.tracker = tracker
        self.store = store
        self.clock = clock
        self.events = events
        self.group = tuple(group)
        self.on_missed = on_missed
        self.pbx = pbx
        self._callers: dict[str, _Caller] = {}
        #: numbers (bare) with open missed calls, so that a connected call of
        #: any other number costs no store round trip; None: not loaded
        self._open: set[str] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        #: the work started by events and not finished yet (tests wait on it)
        self.pending: set[defer.Deferred] = set()

    def start(self) -> None:
        """Follow the tracker; learn which numbers have open missed calls."""
        self._unsubscribe = self.tracker.subscribe(self._on_event)
        self._track(defer.ensureDeferred(self._load_open()))

    def stop(self) -> None:
        """Stop following the tracker."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._callers.clear()

    async def _load_open(self) -> None:
        rows = await self.store.open_missed_calls(pbx=self.pbx)
        self._open = {phone_variants(r["phone"])[0] for r in rows}

    def _track(self, d: defer.Deferred) -> None:
        self.pending.add(d)

        def done(result: object) -> None:
            self.pending.discard(d)
            if isinstance(result, Failure):
                log.failure("missed calls: handling a call event failed", result)

        d.addBoth(done)

    # -- the tracker's events ---------------------------------------------------

    def _on_event(self, event: Any) -> None:
        leg = self.tracker.leg(event.uniqueid)
        if event.extension is None:
            if leg is None or not leg.outside:
                return
            if leg.inbound:
                self._on_caller(event, leg)
            elif event.kind == "answered" and leg.dial_string:
                # an outside number was called and the call got through
                number = leg.dial_string.split("@", 1)[0].rsplit("/", 1)[-1]
                self._got_through(number, event)
            return
        if event.kind != "ringing" or event.direction != "in":
            return
        if not event.call.get("real_call", True):
            return  # a supervisor listening in
        call = self.tracker.call(event.call_api_id)
        if call is None:
            return
        for uniqueid in list(call.legs):
            caller = self._callers.get(uniqueid)
            if caller is not None and event.extension not in caller.rung:
                caller.rung.append(event.extension)

    def _on_caller(self, event: Any, leg: Any) -> None:
        if event.kind == "ringing":
            self._callers[event.uniqueid] = _Caller(
                uniqueid=event.uniqueid,
                came_in=event.time,
                phone=_phone(leg.caller_num),
                caller_num=leg.caller_num or None,
                caller_name=leg.caller_name or None,
                did=leg.first_exten,
            )
            return
        caller = self._callers.get(event.uniqueid)
        if event.kind == "answered":
            if caller is not None:
                caller.answered = True
            if leg.caller_num:
                self._got_through(leg.caller_num, event)
            return
        if event.kind == "hungup" and caller is not None:
            del self._callers[event.uniqueid]
            if not caller.answered:
                self._track(defer.ensureDeferred(self._missed(caller, event)))

    # -- a missed call ------------------------------------------------------------

    async def _missed(self, caller: _Caller, event: Any) -> None:
        call_id = event.call_id or event.call_api_id
        if event.call_id is not None:
            entries = await self.store.statuses(event.call_id)
            if entries and not any(e["status"] == st.OPERATOR_CALLTO for e in entries):
                # the caller stayed in agi_app's menus and asked for nobody
                return
        row = await self.store.add_missed_call(
            call_id=call_id,
            phone=caller.phone,
            did=caller.did,
            time=iso_time(caller.came_in),
            extensions=caller.rung,
            ring_seconds=max(0.0, event.time - caller.came_in),
            pbx=self.pbx,
        )
        log.info("missed call {id} from {phone} (rang {rung})", id=row["id"],
                 phone=caller.caller_num or "a withheld number",
                 rung=", ".join(caller.rung) or "nobody")  # fmt: skip
        if caller.phone is not None and self._open is not None:
            self._open.add(phone_variants(caller.phone)[0])
        if self.on_missed is not None:
            try:
                self.on_missed(row)
            except Exception:
                log.failure("missed calls: on_missed failed")
        await self._publish(row, caller, event)

    async def _publish(self, row: dict[str, Any], caller: _Caller, event: Any) -> None:
        if self.events is None:
            return
        fields = {
            "CallID": row["call_id"],
            "CallAPIID": event.call_api_id,
            "CallFlow": "in",
            "CallerIDNum": caller.caller_num,
            "CallerIDName": caller.caller_name,
            "CalledDID": caller.did,
            "MissedID": row["id"],
            "MissedTime": row["time"],
            "RingSeconds": f"{row['ring_seconds']:.1f}",
            "Extensions": ",".join(row["extensions"]),
        }
        for extension in dict.fromkeys([*row["extensions"], *self.group]):
            if self.events.wants(extension, EVENT_TYPE):
                await self.events.publish(extension, EVENT_TYPE, fields, when=event.time)

    # -- someone got through ------------------------------------------------------

    def _got_through(self, number: str, event: Any) -> None:
        if not _phone(number):
            return
        variants = phone_variants(number)
        if self._open is not None and variants[0] not in self._open:
            return
        self._track(defer.ensureDeferred(
            self.handled(number, event.call_id or event.call_api_id, event.time)))  # fmt: skip

    async def handled(self, number: str, call_id: str, when: float) -> list[int]:
        """Someone got through to ``number`` in call ``call_id`` at ``when``:
        its open missed calls are handled.  Fires their ids."""
        variants = phone_variants(number)
        ids = await self.store.missed_calls_handled(variants, call_id, iso_time(when))
        if self._open is not None:
            self._open.discard(variants[0])
        if ids:
            log.info("missed calls {ids} of {number}: got through in {call_id}",
                     ids=ids, number=number, call_id=call_id)  # fmt: skip
        return ids
