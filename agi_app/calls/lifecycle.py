"""The one call lifecycle: every call, of every kind, ends in exactly one
final status (CONTRACT section 2).

Every kind of call agi_app places or answers -- operator-first click-to-call
(makeCall, extToPhone, phoneToPhone, callbacks to a group), announcement and
IVR calls to a client, incoming calls to an IVR menu -- is one :class:`Call`
followed by one :class:`Lifecycle` per PBX:

* **one record** per call (:class:`Call`): its kind and request parameters,
  the statuses reached and when, its FastAGI sessions and live channels, the
  moment the client answered, its recording;
* **one writer** of statuses (:meth:`Lifecycle.log`), holding the order of
  :data:`REQUIRES` (per kind: which status may follow which), writing no
  repeat (the words of ``statuses.REPEATABLE`` excepted) and nothing after
  the final status;
* **one id generator** (:func:`new_call_id`);
* **one way to settle** a call nobody reported the end of: when its last
  channel hangs up with no FastAGI session left (after a grace period, so a
  session that is just finishing reports the real outcome first), when a
  session is lost, and in :meth:`Lifecycle.reconcile` after every AMI
  (re)login, which also takes up the calls a previous run of agi_app left
  open -- of every kind -- from the store.  :func:`outcome` says what a call
  ends with from what it reached.

The services keep only what is their own: :mod:`agi_app.calls.service`
(the operator-first flow and its FastAGI script), :mod:`agi_app.calls.outbound`
(announcement and IVR calls), :mod:`agi_app.ivr.service` (menus and incoming
calls).  They create calls here, log through here and end through here.

The talk time of a call is the conversation with the client: from
``CLIENT_PICKUP`` to the end.  FINISH's detail and ``talk_seconds``, the
recording's duration, the hangup webhook's ``Duration`` and the widget's
``duration`` all mean that.  A call that call control transfers keeps its
id: its history gains a ``TRANSFER`` entry per hand-over (:meth:`Lifecycle.note`),
its talk time runs to the end of its last leg, and each further leg is
recorded into a file of its own (:meth:`Lifecycle.leg_recording`).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from agi_app.calls import statuses as st
from agi_app.calls.recording import WAV_BYTES_PER_SECOND, WAV_HEADER, Recorder, Recording
from agi_app.times import iso_time, parse_time

__all__ = [
    "CALL_ID_VAR",
    "REQUIRES",
    "Call",
    "Lifecycle",
    "StatusLogged",
    "call_is_live",
    "event_call_id",
    "new_call_id",
    "outcome",
]

log = Logger(namespace="agi_app.calls")

#: the inherited channel variable that ties every channel of a call to its id
CALL_ID_VAR = "AGI_APP_CALL_ID"

_OPERATOR_FIRST = {
    st.OPERATOR_PICKUP: st.OPERATOR_CALLTO,
    st.CLIENT_CALLTO: st.OPERATOR_PICKUP,
    st.CLIENT_PICKUP: st.CLIENT_CALLTO,
    st.FINISH: st.CLIENT_PICKUP,
    st.TRANSFER: st.CLIENT_PICKUP,
}
# The client is dialled first; an IVR menu may then connect it to an
# extension or a number (OPERATOR_*).
_TO_CLIENT = {
    st.CLIENT_PICKUP: st.CLIENT_CALLTO,
    st.OPERATOR_PICKUP: st.OPERATOR_CALLTO,
    st.FINISH: st.CLIENT_PICKUP,
    st.TRANSFER: st.CLIENT_PICKUP,
}
# The caller called in: connected (CLIENT_PICKUP) without a CLIENT_CALLTO.
_INCOMING = {
    st.OPERATOR_PICKUP: st.OPERATOR_CALLTO,
    st.FINISH: st.CLIENT_PICKUP,
    st.TRANSFER: st.CLIENT_PICKUP,
}

#: kind of call -> {status: the status it must follow}
REQUIRES: dict[str, dict[str, str]] = {
    **{kind: _OPERATOR_FIRST for kind in st.OPERATOR_FIRST_KINDS},
    st.ANNOUNCEMENT: _TO_CLIENT,
    st.IVR_CALL: _TO_CLIENT,
    st.INCOMING: _INCOMING,
}

#: kind of call -> the status at which its recording is started and the one
#: at which it goes into the store (the recorded party answered)
RECORDED: dict[str, tuple[str, str]] = {
    **{kind: (st.CLIENT_CALLTO, st.CLIENT_PICKUP) for kind in st.OPERATOR_FIRST_KINDS},
    st.IVR_CALL: (st.OPERATOR_CALLTO, st.OPERATOR_PICKUP),
    st.INCOMING: (st.OPERATOR_CALLTO, st.OPERATOR_PICKUP),
}

#: the detail of a CLIENT_PICKUP whose moment was not seen
PICKUP_UNSEEN = "answer time not seen"

#: Q.850 cause of a first leg that hung up unanswered -> (status, detail);
#: what Asterisk reports when its own dialing code sees these causes
_FIRST_LEG_CAUSES = {
    17: (st.OPERATOR_BUSY, "busy"),
    21: (st.OPERATOR_BUSY, "rejected"),
    18: (st.OPERATOR_NOANSWER, "no answer (no user responding)"),
    19: (st.OPERATOR_NOANSWER, "no answer"),
    20: (st.OPERATOR_OFFLINE, "endpoint unreachable (subscriber absent)"),
}


def new_call_id() -> str:
    """A sortable, unique call id (time-prefixed)."""
    return f"{int(time.time() * 1000):x}{uuid.uuid4().hex[:12]}"


def event_call_id(event: Any) -> str | None:
    """The call id an AMI event's channel carries (``AGI_APP_CALL_ID``), if any."""
    variables = getattr(event, "variables", None)
    value = variables.get(CALL_ID_VAR) if variables else None
    return value or None


def call_is_live(ami: Any, call_id: str) -> bool | None:
    """Whether a channel of the call is on the PBX as the AMI link lists
    them; None while the link is down."""
    if not ami.connected:
        return None
    return any(event_call_id(c) == call_id for c in ami.channels.values())


@dataclass(eq=False)
class Call:
    """What this process knows of one call it follows."""

    call_id: str
    kind: str
    #: the request's parameters, as stored with the call
    params: dict[str, Any]
    #: the statuses in the store, oldest first, and the clock time of each
    logged: list[str] = field(default_factory=list)
    logged_at: dict[str, float] = field(default_factory=dict)
    #: the time text each status has in the store (a status logged late is
    #: dated no earlier than the one it follows, to the store's millisecond)
    logged_times: dict[str, str] = field(default_factory=dict)
    final: bool = False
    #: FastAGI sessions of the call running now
    agi_sessions: int = 0
    #: Uniqueids of the call's live channels, from the AMI events
    channels: set[str] = field(default_factory=set)
    #: the Originate of the first leg has not reported yet: its channel may
    #: not exist (or carry the call id) yet, so nothing may be concluded from
    #: the absence of channels
    placing: bool = False
    #: when the conversation ended as the channel events saw it (the first
    #: Hangup after CLIENT_PICKUP)
    ended_at: float | None = None
    #: Q.850 cause of the latest Hangup of one of the call's channels
    last_cause: int | None = None
    recording: Recording | None = None
    #: the recordings of the legs after transfers (the second leg first)
    further: list[Recording] = field(default_factory=list)
    #: the kind's typed view of ``params`` (e.g. a CallRequest), if it has one
    request: Any = None
    order_id: str | None = None
    #: CLIENT_PICKUP was logged without its moment (it happened while no
    #: agi_app or no AMI link watched): the talk time is unknown
    pickup_unseen: bool = False
    _lock: defer.DeferredLock = field(default_factory=defer.DeferredLock, repr=False)
    _waiters: list[tuple[frozenset[str], defer.Deferred]] = field(
        default_factory=list, repr=False
    )

    def reached(self, status: str) -> bool:
        """True once ``status`` is logged."""
        return status in self.logged

    @property
    def final_status(self) -> str | None:
        """The final status, once logged."""
        return next((s for s in self.logged if s in st.FINAL), None)

    @property
    def pickup_time(self) -> float | None:
        """When the client answered (CLIENT_PICKUP), if it did."""
        return self.logged_at.get(st.CLIENT_PICKUP)

    def talk_seconds(self, ended_at: float | None) -> float | None:
        """The conversation with the client, from its pickup to ``ended_at``."""
        if self.pickup_time is None or ended_at is None or self.pickup_unseen:
            return None
        return max(0.0, ended_at - self.pickup_time)


@dataclass(frozen=True)
class StatusLogged:
    """A status the lifecycle wrote: what :attr:`Lifecycle.on_status` observers get."""

    call: Call
    #: the history entry as the store wrote it
    entry: dict[str, Any]
    #: seconds the store took to write it (queue and transaction)
    write_seconds: float
    #: the conversation's length, on FINISH (None: unknown)
    talk_seconds: float | None = None


def outcome(call: Call, why: str, *, failed: bool = False) -> tuple[str, str]:
    """The final status of a call that ended without anyone reporting how,
    from what it reached: ``(status, detail)``.

    ``failed``: the FastAGI session broke (not a hangup), so an operator-first
    call whose client was not connected ends in ERROR.
    """
    if call.reached(st.CLIENT_PICKUP):
        return st.FINISH, why
    if call.kind in st.OPERATOR_FIRST_KINDS:
        if failed and call.reached(st.OPERATOR_PICKUP):
            return st.ERROR, why
        if call.reached(st.CLIENT_CALLTO):
            return st.CLIENT_CANCEL, why
        if call.reached(st.OPERATOR_PICKUP):
            return st.CLIENT_CANCEL, f"{why} before the client was dialled"
        # The first leg never answered; its Hangup cause says why.
        cause = call.last_cause
        if cause in _FIRST_LEG_CAUSES:
            status, detail = _FIRST_LEG_CAUSES[cause]
            return status, f"{detail} (cause {cause})"
        return st.ERROR, why if cause is None else f"{why} (cause {cause})"
    if call.reached(st.CLIENT_CALLTO):
        return st.CLIENT_CANCEL, why
    return st.ERROR, why


class Lifecycle:
    """Every call of one PBX this process follows, each to its one final status.

    :param store: the call log (:class:`agi_app.store.Store`)
    :param ami: the PBX link (:class:`agi_app.ami.service.AMIService`)
    :param dialing: the ``[dialing]`` section (where recordings are)
    :param clock: an ``IReactorTime``
    :param pbx: the name of the PBX
    :param grace: seconds between a call's last hangup and settling it
    :param typed: kind -> a function building the kind's typed request from
        the stored parameters (raises TypeError/ValueError when it cannot:
        such a call is closed once nothing on the PBX belongs to it)
    :param new_id: the call id generator (:func:`new_call_id`)
    """

    def __init__(
        self,
        *,
        store: Any,
        ami: Any,
        dialing: Any,
        clock: Any,
        pbx: str = "default",
        grace: float = 3.0,
        typed: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
        new_id: Callable[[], str] = new_call_id,
    ):
        self.store = store
        self.ami = ami
        self.clock = clock
        self.pbx = pbx
        self.grace = grace
        self._typed = dict(typed or {})
        self._client_dial: dict[str, Callable[[Call], str]] = {}
        self._new_id = new_id
        self._calls: dict[str, Call] = {}
        self._adopting: dict[str, list[defer.Deferred]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        #: set by stop(): a session lost from now on is this process going
        #: away, not the call ending (the next start takes the call up again)
        self.stopping = False
        #: other nodes follow calls of this PBX too (one PostgreSQL store,
        #: agi_app.cluster): what the store has is read back before a call is
        #: settled, and reconcile() takes up only this node's calls
        self.shared = False
        #: this node leads the PBX (always, alone): it closes the calls that
        #: no node follows (:meth:`sweep_orphans`)
        self.leading = True
        # call id -> when a sweep first saw the open call without a channel
        self._orphans: dict[str, float] = {}
        #: called with a :class:`StatusLogged` after every status written
        #: (metrics); an observer must not raise and must not wait
        self.on_status: list[Callable[[StatusLogged], object]] = []
        self.recorder = Recorder(
            store=store, dialing=dialing, clock=clock, live=lambda c: call_is_live(ami, c)
        )
        # the recordings a previous run left unmeasured are looked at once
        self._left_recordings_done = False

    def add_kind(
        self,
        kind: str,
        typed: Callable[[dict[str, Any]], Any],
        *,
        client_dial: Callable[[Call], str] | None = None,
    ) -> None:
        """Give calls of ``kind`` a typed request built from their parameters;
        ``client_dial`` gives the dial string of a call's client leg, which
        lets :meth:`reconcile` recognise that leg among the call's channels."""
        self._typed[kind] = typed
        if client_dial is not None:
            self._client_dial[kind] = client_dial

    # -- wiring -----------------------------------------------------------------

    def start(self) -> None:
        """Follow the channels of every call; reconcile after every AMI login."""
        self._unsubscribe.append(self.ami.subscribe(self._on_event))
        self._unsubscribe.append(self.ami.on_connect(lambda _ami: self._reconcile_logged()))

    def stop(self) -> None:
        """Stop following; calls still going stay open in the store for the
        next start to take up."""
        self.stopping = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self.recorder.stop()

    # -- calls ------------------------------------------------------------------

    async def create(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        sip: str | None,
        phone: str | None,
        order_id: str | None = None,
        external_key: str | None = None,
        request: Any = None,
        placing: bool = False,
    ) -> tuple[Call, bool]:
        """Create a call in the store (``CALL``) and follow it; returns
        ``(call, created)``.  A repeated ``external_key`` with the same
        parameters returns the existing call (``created`` False) -- followed
        if it is still open; with other parameters the store raises
        :class:`~agi_app.store.ExternalKeyConflict`."""
        row, created = await self.store.create_call(
            call_id=self._new_id(), kind=kind, sip=sip, phone=phone, order_id=order_id,
            external_key=external_key, params=params, pbx=self.pbx,
        )  # fmt: skip
        call_id = row["call_id"]
        if not created:
            existing = self._calls.get(call_id) or await self.find(call_id)
            if existing is None:  # ended (or not ours): a record of what it was
                existing = Call(call_id, row.get("kind") or kind, row.get("params") or params)
                existing.final = bool(row.get("final_status"))
                if existing.final:
                    existing.logged.append(row["final_status"])
            return existing, False
        call = Call(call_id, kind, dict(params), logged=[st.CALL], request=request,
                    order_id=order_id)  # fmt: skip
        call.logged_at[st.CALL] = self.clock.seconds()
        call.placing = placing
        self._calls[call_id] = call
        return call, True

    def get(self, call_id: str) -> Call | None:
        """A call followed now, if any."""
        return self._calls.get(call_id)

    async def find(self, call_id: str) -> Call | None:
        """A call followed now, or an open one of this PBX read back from the
        store (after a restart of this process); None if ended or unknown.

        The FastAGI script and reconcile() may both ask for one call at once;
        they get the same object, or each would follow the call alone.
        """
        call = self._calls.get(call_id)
        if call is not None:
            return call
        waiting = self._adopting.get(call_id)
        if waiting is not None:
            d: defer.Deferred = defer.Deferred()
            waiting.append(d)
            return await d
        waiting = self._adopting[call_id] = []
        try:
            call = await self._load(call_id)
        except Exception:
            failure = Failure()
            del self._adopting[call_id]
            for d in waiting:
                d.errback(failure)
            raise
        del self._adopting[call_id]
        for d in waiting:
            d.callback(call)
        return call

    async def _load(self, call_id: str) -> Call | None:
        row = await self.store.get_call(call_id)
        if row is None or row.get("final_status"):
            return None
        kind = row.get("kind") or ""
        if kind not in REQUIRES:
            return None
        params = row.get("params") or {}
        request = None
        if kind in self._typed:
            try:
                request = self._typed[kind](params)
            except (TypeError, ValueError):
                return None
        entries = await self.store.statuses(call_id)
        if call_id in self._calls:  # taken up meanwhile
            return self._calls[call_id]
        call = Call(call_id, kind, dict(params), request=request, order_id=row.get("order_id"))
        for entry in entries:
            call.logged.append(entry["status"])
            if entry["status"] == st.CLIENT_PICKUP and entry["detail"] == PICKUP_UNSEEN:
                call.pickup_unseen = True
            at = parse_time(entry["time"])
            if at is not None:
                call.logged_at.setdefault(entry["status"], at)
                call.logged_times.setdefault(entry["status"], entry["time"])
        self._calls[call_id] = call
        try:
            await self._restore_recording(call, row.get("order_id"))
        except Exception as e:  # the call is followed all the same
            log.warn("recording of {call_id} not restored: {e}", call_id=call_id, e=e)
        return call

    async def _restore_recording(self, call: Call, order_id: str | None) -> None:
        """After a restart: what became of the call's recording.  MixMonitor
        is started into a file named from the call just before the status
        of :data:`RECORDED`; one stored already is taken up (its size and
        duration are still to come), one whose party answered before the
        restart but that was not stored yet is stored now."""
        started, stored_at = RECORDED.get(call.kind, (None, None))
        if started is None or not call.reached(started):
            return
        stored = await self.store.call_recordings(call.call_id)
        if stored:
            call.recording = Recording(
                call.call_id, stored[0]["path"], record_id=stored[0]["record_id"]
            )
            # the legs after transfers, each stored once its recording started
            call.further = [
                Recording(call.call_id, row["path"], started=parse_time(row["created_at"]),
                          record_id=row["record_id"], leg=leg)
                for leg, row in enumerate(stored[1:], start=2)
            ]  # fmt: skip
            return
        call.recording = self.recorder.expected(
            call.call_id, order_id, call.logged_at.get(started)
        )
        if stored_at is not None and call.reached(stored_at):
            await self.recorder.store_it(call.recording)

    # -- the status writer ------------------------------------------------------

    async def log(
        self,
        call: Call,
        status: str,
        detail: str | None = None,
        *,
        at: float | None = None,
        **extra: Any,
    ) -> dict[str, Any] | None:
        """Append ``status`` to the call's history unless it is a repeat, out
        of order or after the final status; fires the new entry, or None.

        ``at`` dates a status that is logged late; it is kept between the
        previous status of the call and now, so the call's times stay in
        order.  A final status ends the call here (see :meth:`_ended`).
        """
        await call._lock.acquire()
        try:
            if call.final or (status not in st.REPEATABLE and status in call.logged):
                return None
            need = REQUIRES.get(call.kind, {}).get(status)
            if need is not None and need not in call.logged:
                log.debug("{call_id}: {status} skipped, {need} not reached",
                          call_id=call.call_id, status=status, need=need)  # fmt: skip
                return None
            now = self.clock.seconds()
            if at is not None:
                floor = call.logged_at.get(need or "", at) if need else at
                at = min(now, max(at, floor))
                text = iso_time(at)
                # The store dated the status it follows a moment after the
                # clock reading kept in logged_at: not before that text.
                after = call.logged_times.get(need or "") if need else None
                extra["time"] = after if after is not None and after > text else text
            if self.shared and status not in st.REPEATABLE:
                extra["once"] = True  # another node may have written it
            entry = await self.store.add_status(call.call_id, status, detail, **extra)
            if entry is None:
                if self.shared and await self._refresh(call, status):
                    return None  # another node wrote it: the call goes on
                # the store had it final already (another run, another node)
                self._ended(call)
                return None
            call.logged.append(status)
            call.logged_at.setdefault(status, at if at is not None else now)
            call.logged_times.setdefault(status, entry["time"])
            self._observed(StatusLogged(call, entry, self.clock.seconds() - now,
                                        extra.get("talk_seconds")))  # fmt: skip
            recorded = RECORDED.get(call.kind)
            if recorded is not None and status == recorded[1]:
                await self.recorder.store_it(call.recording)
            if status == st.CLIENT_PICKUP and detail == PICKUP_UNSEEN:
                call.pickup_unseen = True
            if status in st.FINAL:
                self._ended(call)
            self._wake(call)
            return entry
        finally:
            call._lock.release()

    async def finish(self, call: Call, detail: str | None = None, *,
                     ended_at: float | None) -> dict[str, Any] | None:  # fmt: skip
        """Log FINISH with the talk time from the client's pickup to
        ``ended_at`` (None: the end was not seen, the talk time is unknown);
        the detail is ``detail``, or ``talk N s`` without one."""
        talk = call.talk_seconds(ended_at)
        if detail is None:
            detail = f"talk {talk:.0f} s" if talk is not None else "talk time unknown"
        return await self.log(call, st.FINISH, detail, talk_seconds=talk)

    def wait_for(self, call: Call, statuses: Iterable[str]) -> defer.Deferred:
        """A Deferred firing with the first of ``statuses`` the call reaches,
        or with its final status (None if unknown) once that makes the others
        impossible."""
        wanted = frozenset(statuses)
        for status in call.logged:
            if status in wanted:
                return defer.succeed(status)
        if call.final:
            return defer.succeed(call.final_status)
        d: defer.Deferred = defer.Deferred()
        call._waiters.append((wanted, d))
        return d

    @staticmethod
    def _wake(call: Call) -> None:
        for wanted, d in list(call._waiters):
            hit = next((s for s in call.logged if s in wanted), None)
            if hit is not None or call.final:
                call._waiters.remove((wanted, d))
                d.callback(hit if hit is not None else call.final_status)

    def _observed(self, logged: StatusLogged) -> None:
        for observer in self.on_status:
            try:
                observer(logged)
            except Exception:
                log.failure("{call_id}: status observer", call_id=logged.call.call_id)

    def _ended(self, call: Call) -> None:
        call.final = True
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        self._wake(call)
        if not call.agi_sessions:
            self._finish_recordings(call)

    def _finish_recordings(self, call: Call) -> None:
        for recording in (call.recording, *call.further):
            self.recorder.finish(recording)

    # -- transfers --------------------------------------------------------------

    async def note(
        self, call_id: str, status: str, detail: str | None = None
    ) -> dict[str, Any] | None:
        """Log a status that is not final (``TRANSFER``) that something
        outside the call's own flow saw (call control): through :meth:`log`
        for a followed call; straight into the store for an open call this
        process does not follow; nothing for an unknown or ended call.  Fires
        the new entry, or None."""
        if status in st.FINAL:
            raise ValueError(f"{status} is final: only the call's own flow ends a call")
        call = self._calls.get(call_id)
        if call is not None:
            return await self.log(call, status, detail)
        row = await self.store.get_call(call_id)
        if row is None or row.get("final_status"):
            return None
        return await self.store.add_status(call_id, status, detail)

    def leg_recording(self, call_id: str) -> str | None:
        """The file (as Asterisk sees it) that the next leg of a recorded,
        followed call goes into once it is transferred: ``-2``, ``-3``...
        beside the first; None when the call is not followed or not
        recorded.  A file handed out for a transfer that never connected is
        handed out again."""
        call = self._calls.get(call_id)
        if call is None or call.final or call.recording is None:
            return None
        if call.further and call.further[-1].started is None:
            rec = call.further[-1]
        else:
            rec = self.recorder.expected(call_id, call.order_id, None, leg=len(call.further) + 2)
            call.further.append(rec)
        return self.recorder.pbx_path(call.order_id, call_id, rec.leg)

    async def leg_recorded(self, call_id: str) -> None:
        """The recording of the call's next leg started (the party the call
        was handed to answered): store it as a further recording of the call;
        it is completed with the others when the call ends."""
        call = self._calls.get(call_id)
        rec = next((r for r in call.further if r.started is None), None) if call else None
        if rec is None:
            return
        rec.started = self.clock.seconds()
        await self.recorder.store_it(rec)

    # -- FastAGI sessions -------------------------------------------------------

    @asynccontextmanager
    async def session(self, call: Call) -> AsyncIterator[Call]:
        """Count a FastAGI session of the call while it runs: no settling
        from the channels meanwhile; the recording is finished after it."""
        call.agi_sessions += 1
        try:
            yield call
        finally:
            call.agi_sessions -= 1
            if call.final and not call.agi_sessions:
                self._finish_recordings(call)

    async def session_lost(self, call: Call, why: str, *, failed: bool = False) -> None:
        """The call's FastAGI session ended without reporting the outcome (a
        hangup, or the session broke): end the call from what was reached --
        unless this process is stopping, when the call stays open for the
        next start to take up."""
        if self.stopping:
            log.info("{call_id}: agi_app is stopping; the call stays open and the next "
                     "start takes it up again", call_id=call.call_id)  # fmt: skip
            return
        await self.settle(call, why, ended_at=self.clock.seconds(), failed=failed)

    async def _catch_up(self, call: Call, live: set[str]) -> None:
        """What a call reached on the PBX while nobody watched, from the
        channel snapshot: the dialplan goes on without agi_app (see
        ``[agi-app-operator]``), so after a restart a first leg that is up has
        answered, a channel the dialplan dialled on the client's trunk
        (``AppDial``) means the client was dialled, and up, that it answered
        -- when exactly is not seen."""
        if call.kind not in self._client_dial:
            return
        channels = [self.ami.channels[u] for u in live if u in self.ami.channels]
        clients = [c for c in channels if (c.get("Application") or "") == "AppDial"
                   and self._is_client_channel(call, c.get("Channel") or "")]  # fmt: skip
        if not clients:
            if any(_is_up(c) for c in channels):
                await self.log(call, st.OPERATOR_PICKUP, "answered while agi_app was away")
            return
        # the client's channel was created when it was dialled; the operator
        # answered no later than that
        await self._client_dialled(call, self.clock.seconds() - _hms(clients[0].get("Duration")))
        if any(_is_up(c) for c in clients):
            await self.log(call, st.CLIENT_PICKUP, PICKUP_UNSEEN)

    async def _catch_up_pickup(self, call: Call, live: set[str]) -> None:
        """The AMI link was down while the call's FastAGI session went on:
        the session logs all but the client's answer itself (it learns of
        it only when Dial returns, at the end of the conversation), so a
        client channel that is up in the snapshot is logged as CLIENT_PICKUP
        now -- when exactly it answered is not seen -- and its recording is
        stored with it."""
        if call.kind not in self._client_dial or not call.reached(st.CLIENT_CALLTO):
            return
        channels = [self.ami.channels[u] for u in live if u in self.ami.channels]
        if any(
            (c.get("Application") or "") == "AppDial"
            and self._is_client_channel(call, c.get("Channel") or "")
            and _is_up(c)
            for c in channels
        ):
            await self.log(call, st.CLIENT_PICKUP, PICKUP_UNSEEN,
                           at=call.logged_at.get(st.CLIENT_CALLTO))  # fmt: skip

    async def _ended_in_conversation(self, call: Call) -> bool:
        """A call that came and went entirely while no agi_app watched (the
        dialplan connected the client by itself): the recording file tells.
        MixMonitor with ``b`` writes audio only while the parties are
        bridged, so a file with audio means the client answered, and its
        length is the talk time.  Logs the statuses and FINISH; False when
        there is no such evidence."""
        if call.kind not in self._client_dial or call.reached(st.CLIENT_PICKUP):
            return False
        rec = call.recording or self.recorder.expected(call.call_id, call.order_id, None)
        try:
            size = os.path.getsize(rec.path)
        except OSError:
            return False
        if size <= WAV_HEADER:
            return False
        talk = (size - WAV_HEADER) / WAV_BYTES_PER_SECOND
        await self._client_dialled(call, None)
        await self.log(call, st.CLIENT_PICKUP, PICKUP_UNSEEN)
        await self.log(call, st.FINISH, f"talk {talk:.0f} s (from the recording)",
                       talk_seconds=talk)  # fmt: skip
        return call.final

    async def _refresh(self, call: Call, status: str | None = None) -> bool:
        """Read back what the store has of a call that other nodes follow
        too: the statuses they wrote join the call's (``status``, just
        refused as a repeat, among them); a final status ends the call here.
        True while the call goes on."""
        row = await self.store.get_call(call.call_id)
        if row is None or row.get("final_status"):
            if not call.final:
                if row is not None and row["final_status"] not in call.logged:
                    call.logged.append(row["final_status"])
                self._ended(call)
            return False
        for entry in await self.store.statuses(call.call_id):
            if entry["status"] not in call.logged:
                call.logged.append(entry["status"])
                at = parse_time(entry["time"])
                if at is not None:
                    call.logged_at.setdefault(entry["status"], at)
                    call.logged_times.setdefault(entry["status"], entry["time"])
        if status is not None and status not in call.logged:
            call.logged.append(status)
        self._wake(call)
        return True

    async def settle(self, call: Call, why: str, *, ended_at: float | None = None,
                     failed: bool = False) -> None:  # fmt: skip
        """End the call from what it reached (:func:`outcome`); with other
        nodes, from what the store has of it (they may have ended it)."""
        if call.final:
            return
        if self.shared and not await self._refresh(call):
            return
        if not call.agi_sessions and await self._ended_in_conversation(call):
            return
        status, detail = outcome(call, why, failed=failed)
        if status == st.FINISH:
            # The talk time is unknown when the end was not seen (it ended
            # while no process or no AMI link was watching).  Operator-first
            # calls say their talk time; the others why they ended.
            said = None if call.kind in st.OPERATOR_FIRST_KINDS else why
            await self.finish(call, said, ended_at=ended_at or call.ended_at)
        else:
            await self.log(call, status, detail)

    # -- AMI events -------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        call_id = event_call_id(event)
        call = self._calls.get(call_id) if call_id else None
        if call is None:
            return
        name = (event.get("Event") or "").lower()
        uniqueid = event.get("Uniqueid")
        if name == "hangup":
            call.channels.discard(uniqueid)
            call.last_cause = _int(event.get("Cause"))
            if call.reached(st.CLIENT_PICKUP) and (
                call.ended_at is None or call.reached(st.TRANSFER)
            ):
                # either party hanging up ends the conversation; a call handed
                # over goes on with another party, up to its last hangup
                call.ended_at = self.clock.seconds()
            if not call.channels and not call.agi_sessions:
                self.clock.callLater(self.grace, self._settle_later, call)
            return
        # Only live channels: a stray event after a channel's Hangup must not
        # bring it back, or the call would wait for a Hangup that never comes.
        if uniqueid and uniqueid in self.ami.channels:
            call.channels.add(uniqueid)
        if name == "dialend" and (event.get("DialStatus") or "").upper() == "ANSWER":
            dest = event.get("DestChannel") or ""
            if not call.reached(st.CLIENT_CALLTO) and self._is_client_channel(call, dest):
                # the dialplan dialled the client before agi_app followed the call
                d = defer.ensureDeferred(self._client_answered(call))
                d.addErrback(lambda f: log.failure("{id}: pickup", f, id=call.call_id))
                return
            self._answered(call)
        elif name == "dialbegin" and not call.reached(st.CLIENT_CALLTO):
            self._maybe_client_dialled(call, event.get("DestChannel") or "")

    def _maybe_client_dialled(self, call: Call, dest: str) -> None:
        """A Dial of the call reached the client's trunk while no FastAGI
        session logged it: the dialplan connects the client by itself
        (agi_app was away when the first leg answered)."""
        if not self._is_client_channel(call, dest):
            return
        d = defer.ensureDeferred(self._client_dialled(call, None))
        d.addErrback(lambda f: log.failure("{call_id}: client dialled", f, call_id=call.call_id))

    def _is_client_channel(self, call: Call, channel: str) -> bool:
        dial_of = self._client_dial.get(call.kind)
        return dial_of is not None and channel.startswith(_channel_prefix(dial_of(call)))

    async def _client_answered(self, call: Call) -> None:
        await self._client_dialled(call, None)
        await self.log(call, st.CLIENT_PICKUP)

    async def _client_dialled(self, call: Call, at: float | None) -> None:
        await self.log(call, st.OPERATOR_PICKUP, "answered while agi_app was away", at=at)
        await self.log(call, st.CLIENT_CALLTO, "dialled by the dialplan", at=at)
        if call.recording is None:
            await self._restore_recording(call, call.order_id)

    def _answered(self, call: Call) -> None:
        """A Dial of the call was answered: the party rung last picked up,
        the moment it happened (the FastAGI script sees it only later)."""
        rung = next(
            (s for s in reversed(call.logged) if s in (st.OPERATOR_CALLTO, st.CLIENT_CALLTO)),
            None,
        )
        pickup = {st.OPERATOR_CALLTO: st.OPERATOR_PICKUP, st.CLIENT_CALLTO: st.CLIENT_PICKUP}
        if rung is None or call.reached(pickup[rung]):
            return
        d = defer.ensureDeferred(self.log(call, pickup[rung]))
        d.addErrback(lambda f: log.failure("{call_id}: pickup", f, call_id=call.call_id))

    def schedule_settle(self, call: Call) -> None:
        """Settle the call after the grace period if nothing of it is left
        (an Originate whose outcome never came, on a link that stayed up)."""
        self.clock.callLater(self.grace, self._settle_later, call)

    def _settle_later(self, call: Call) -> None:
        if call.final or call.placing or call.agi_sessions or call.channels:
            return
        if not self.ami.connected:
            return  # the channel list is stale; reconcile() decides after the next login
        if self._live_channels(call.call_id):
            return
        d = defer.ensureDeferred(self.settle(call, "all channels hung up"))
        d.addErrback(lambda f: log.failure("{call_id}: settle", f, call_id=call.call_id))

    def _live_channels(self, call_id: str) -> set[str]:
        return {uid for uid, c in self.ami.channels.items() if event_call_id(c) == call_id}

    # -- reconciliation ---------------------------------------------------------

    def _reconcile_logged(self) -> None:
        d = defer.ensureDeferred(self.reconcile())
        d.addErrback(lambda f: log.failure("reconcile", f))

    async def reconcile(self) -> int:
        """Take up every call the store has open for this PBX, of every kind,
        and end those nothing on the PBX or in this process belongs to any
        more, each by its kind's rules; returns how many it ended.

        Runs after each AMI (re)login, when the service has just resynced its
        channel list from the PBX.
        """
        closed = 0
        for row in await self.store.open_calls(pbx=self.pbx):
            if not self.ami.connected:
                break  # the link dropped again: the next login reconciles
            call_id = row["call_id"]
            if self.shared and call_id not in self._calls:
                continue  # another node's, or nobody's: sweep_orphans()
            call = await self.find(call_id)
            live = self._live_channels(call_id)
            if call is None:
                # open in the store but not to be taken up (a kind or
                # parameters of another version): close it once nothing on
                # the PBX belongs to it (or it ended meanwhile: the store then
                # refuses a second final status)
                if not live:
                    started = self.clock.seconds()
                    entry = await self.store.add_status(
                        call_id, st.ERROR, "no channel left on the PBX; call not resumable"
                    )
                    closed += entry is not None
                    if entry is not None:
                        gone = Call(call_id, row.get("kind") or "", {}, logged=[st.ERROR],
                                    final=True)  # fmt: skip
                        self._observed(StatusLogged(gone, entry, self.clock.seconds() - started))
                continue
            if call.final or call.placing:
                continue
            # The list was just rebuilt from the PBX: it replaces what the
            # events said before the link dropped (Hangups may have been missed).
            call.channels = live
            if live and not call.agi_sessions:
                await self._catch_up(call, live)
            elif live:
                await self._catch_up_pickup(call, live)
            if live or call.agi_sessions:
                continue
            await self.settle(call, "no channel left on the PBX")
            closed += call.final
        if not self._left_recordings_done and self.ami.connected:
            self._left_recordings_done = True
            await self._complete_left_recordings()
        return closed

    #: how many of the newest recordings the first reconcile looks at
    LEFT_RECORDINGS = 500

    async def _complete_left_recordings(self) -> None:
        """The size and duration of a recording are measured once its file
        stops growing, a second or two after its call ended; a previous run
        killed meanwhile left them unset for good.  After a start: every one
        of the newest recordings without a size whose call has ended and is
        not being measured here is measured now (its ``record`` event
        follows)."""
        page = await self.store.recordings(1, self.LEFT_RECORDINGS)
        for row in page.items:
            if (
                row.get("size") is not None
                or row["call_id"] in self._calls
                or self.recorder.watching(row["record_id"])
            ):
                continue
            call = await self.store.get_call(row["call_id"])
            if call is None or not call.get("final_status"):
                continue
            self.recorder.finish(
                Recording(row["call_id"], row["path"], record_id=row["record_id"])
            )


    async def sweep_orphans(self) -> int:
        """Close the calls of this PBX that no node follows any more (the
        node that placed them died): an open call that is not followed here
        and has had no channel on the PBX since the previous sweep is taken
        up from the store and settled (:meth:`settle`: from what it reached,
        the recording telling a conversation).  Only the PBX's leader does
        this (agi_app.cluster); returns how many it ended.

        Two sweeps in a row without a channel, not one: a call another node
        has just created has no channel until its Originate is under way."""
        if not self.leading or not self.ami.connected:
            self._orphans.clear()
            return 0
        now = self.clock.seconds()
        channelless: dict[str, float] = {}
        live = {event_call_id(c) for c in self.ami.channels.values()}
        closed = 0
        for row in await self.store.open_calls(pbx=self.pbx):
            call_id = row["call_id"]
            if call_id in self._calls or call_id in live:
                continue
            first = self._orphans.get(call_id)
            channelless[call_id] = first if first is not None else now
            if first is None or now - first < self.grace or not self.ami.connected:
                continue
            call = await self.find(call_id)
            if call is None:  # ended meanwhile, or not resumable
                continue
            if call.final or call.placing or call.agi_sessions or self._live_channels(call_id):
                continue
            await self.settle(call, "no channel left on the PBX")
            closed += call.final
        self._orphans = channelless
        return closed


def _channel_prefix(dial: str) -> str:
    """The name prefix of channels a dial string makes: ``PJSIP/123@pstn``
    and ``PJSIP/pstn`` make ``PJSIP/pstn-...``."""
    tech, _, resource = dial.partition("/")
    endpoint = resource.rpartition("@")[2] or resource
    return f"{tech}/{endpoint}-"


def _is_up(channel: Any) -> bool:
    return (channel.get("ChannelState") or "") == "6"


def _hms(value: str | None) -> float:
    """Seconds of a CoreShowChannel ``Duration`` (``HH:MM:SS``); 0 if unknown."""
    try:
        h, m, sec = (int(x) for x in (value or "").split(":"))
    except ValueError:
        return 0.0
    return float(h * 3600 + m * 60 + sec)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
