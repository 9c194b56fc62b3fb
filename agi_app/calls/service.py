"""Operator-first click-to-call: makeCall, extToPhone and phoneToPhone.

The flow (CONTRACT sections 2 to 4):

1. :meth:`CallService.place` validates nothing itself (the web layer hands it a
   :class:`CallRequest` built from checked values), creates the call in the
   store (``CALL``; idempotent on ``external_key``), logs ``OPERATOR_CALLTO``
   and originates the first leg into the dialplan context
   ``[agi-app-operator]`` with the call id carried as the inherited channel
   variable ``AGI_APP_CALL_ID`` and the caller ID the operator should see.
   A callback to several extensions originates a Local channel into
   ``[agi-app-group]`` instead, whose Dial rings them together; the first to
   answer is the operator, and the Local channel's other half goes on into
   ``[agi-app-operator]`` as a single extension would.
2. When the first leg answers, the dialplan runs the FastAGI script
   ``operator_call`` (:meth:`CallService.operator_call`): it logs
   ``OPERATOR_PICKUP``, plays the waiting announcement, starts MixMonitor,
   logs ``CLIENT_CALLTO`` and runs ``Dial`` to the client with the time limit.
   The recording enters the store only with ``CLIENT_PICKUP`` (MixMonitor
   records only while bridged); the empty file of a call whose client never
   answered is removed once its channels are gone.
   ``CLIENT_PICKUP`` comes from the AMI ``DialEnd`` event the moment the
   client answers (or from ``DIALSTATUS`` if the AMI link is down); the final
   status comes from ``DIALSTATUS`` when Dial returns.
3. Every call ends in exactly one final status, whatever fails: a failed
   Originate maps its reason; a hangup or a lost FastAGI connection maps what
   was reached so far (a first leg that never answered: its Hangup cause);
   and :meth:`CallService.reconcile`, run after every AMI (re)connect and so
   also at start-up, closes the calls the store still has open that no
   channel and no FastAGI session belongs to any more, and follows the others
   (adopted from the store after a restart) until their channels hang up.

The store serialises status writes on its single writer and refuses anything
after a final status, so two parts of this module racing to end one call
still leave exactly one final status; this module additionally keeps the
order (``PICKUP`` never before ``CALLTO``) by filling in nothing and skipping
what would be out of order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from agi_app import validation
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import REQUIRES, new_call_id
from agi_app.calls.recording import Recorder, Recording
from agi_app.errors import PBXUnavailable
from agi_app.store.base import iso_time

__all__ = ["CallRequest", "CallService", "ActiveCall"]

log = Logger(namespace="agi_app.calls")

#: channel variable that ties every channel of a call to its call id
CALL_ID_VAR = "AGI_APP_CALL_ID"
#: set by call control on a channel it moves elsewhere (hold, transfer, park...)
HANDOFF_VAR = "AGI_APP_HANDOFF"
#: the FastAGI script the dialplan runs when the first leg answers
OPERATOR_SCRIPT = "operator_call"
#: dialplan context that rings several extensions together (a callback with
#: several ``src_num``); the first leg is a Local channel into it
GROUP_CONTEXT = "agi-app-group"
#: channel variables the group context reads: the dial string of the members
#: (``PJSIP/200&PJSIP/201``) and their ring time in seconds
GROUP_DIAL_VAR = "AGI_APP_GROUP"
GROUP_RING_VAR = "AGI_APP_RING"


@dataclass(frozen=True)
class CallRequest:
    """One operator-first call, built by the web layer from validated input.

    ``first`` is the operator's extension (``first_is_phone`` False) or, for
    phoneToPhone, the first outside number dialled through ``trunk``.

    ``group`` lists the extensions rung together when there are several (a
    callback with several ``src_num``); ``first`` is then the first of them,
    and it is what the store keeps as the call's ``sip`` (so ``sip`` stays
    one extension everywhere) and what the client sees as the caller.  Empty
    (the default) or a single extension: only ``first`` is rung.
    """

    kind: str
    first: str
    phone: str
    trunk: str
    order_id: str | None = None
    external_key: str | None = None
    first_is_phone: bool = False
    call_time_to_ext: int = 30
    limit_call_time: int | None = None
    playback_waiting: bool = True
    caller_id_for_employee: str | None = None
    group: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # params() come back from the store as JSON lists
        object.__setattr__(self, "group", tuple(self.group))

    @property
    def members(self) -> tuple[str, ...]:
        """The extensions the first leg rings (just ``first`` unless a group)."""
        return self.group if len(self.group) > 1 else (self.first,)

    @property
    def is_group(self) -> bool:
        """Several extensions are rung together (through :data:`GROUP_CONTEXT`)."""
        return not self.first_is_phone and len(self.group) > 1

    def params(self) -> dict[str, Any]:
        """The parameters that make two requests with one external_key "the same"."""
        return asdict(self)


@dataclass
class ActiveCall:
    """What this process knows of a call it is driving right now."""

    call_id: str
    request: CallRequest
    logged: list[str] = field(default_factory=list)
    final: bool = False
    agi_sessions: int = 0
    channels: set[str] = field(default_factory=set)
    pickup_time: float | None = None
    #: the conversation's recording, once MixMonitor started on it; it goes
    #: into the store only when the client answers (CLIENT_PICKUP)
    recording: Recording | None = None
    operator_waiters: list[defer.Deferred] = field(default_factory=list)
    lock: defer.DeferredLock = field(default_factory=defer.DeferredLock)
    #: the Originate of the first leg has not reported its outcome yet: its
    #: channel may not exist (or carry the call id) yet, so nothing may be
    #: concluded from the absence of channels
    placing: bool = False
    #: clock time at which this process logged each status
    logged_at: dict[str, float] = field(default_factory=dict)
    #: when the conversation ended as the channel events saw it (the first
    #: Hangup after CLIENT_PICKUP), for FINISH decided without the FastAGI session
    ended_at: float | None = None
    #: Q.850 cause of the latest Hangup of one of the call's channels
    last_cause: int | None = None


class CallService:
    """Places operator-first calls and follows each to its one final status.

    :param store: the call log (:class:`agi_app.store.Store`)
    :param ami: the PBX link (:class:`agi_app.ami.service.AMIService`)
    :param dialing: the ``[dialing]`` configuration section
    :param clock: an ``IReactorTime`` (real reactor or ``task.Clock``)
    :param pbx: the name of the PBX this service drives (several may exist)
    """

    def __init__(
        self,
        *,
        store,
        ami,
        dialing,
        clock,
        pbx: str = "default",
        new_id: Callable[[], str] | None = None,
        hangup_grace: float = 3.0,
    ):
        self.store = store
        self.ami = ami
        self.dialing = dialing
        self.clock = clock
        self.pbx = pbx
        self._new_id = new_id or new_call_id
        self._active: dict[str, ActiveCall] = {}
        self._hangup_grace = hangup_grace
        self._unsubscribe: list[Callable[[], None]] = []
        #: set by stop(): a session lost from now on is this process going
        #: away, not the call ending (the next start takes the call up again)
        self._stopping = False
        self.recorder = Recorder(store=store, dialing=dialing, clock=clock, live=self._is_live)
        #: call id -> Deferreds of callers waiting for the same _adopt()
        self._adopting: dict[str, list[defer.Deferred]] = {}

    # -- wiring -----------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the AMI events this service follows."""
        self._unsubscribe.append(self.ami.subscribe(self._on_dial_end, "DialEnd"))
        self._unsubscribe.append(self.ami.subscribe(self._on_hangup, "Hangup"))
        self._unsubscribe.append(self.ami.subscribe(self._on_channel_event, None))
        self.ami.on_connect(lambda _ami: self._reconcile_logged())

    def stop(self) -> None:
        """Drop the AMI subscriptions and pending recording checks; calls
        still going are left open in the store for the next start."""
        self._stopping = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self.recorder.stop()

    def register_scripts(self, registry) -> None:
        """Register this service's FastAGI scripts in ``registry``."""
        registry.register(OPERATOR_SCRIPT, self.operator_call)

    # -- placing a call ---------------------------------------------------------

    async def place(self, req: CallRequest) -> tuple[str, bool]:
        """Create and start a call; returns ``(call_id, created)``.

        A repeated ``external_key`` with the same parameters returns the
        existing call with ``created`` False and places nothing; with other
        parameters the store raises ``ExternalKeyConflict``.  With the AMI link
        down the call is logged as CALL then ERROR and :class:`PBXUnavailable`
        is raised.
        """
        call, created = await self.store.create_call(
            call_id=self._new_id(),
            kind=req.kind,
            sip=req.first,
            phone=req.phone,
            order_id=req.order_id,
            external_key=req.external_key,
            params=req.params(),
            pbx=self.pbx,
        )
        call_id = call["call_id"]
        if not created:
            return call_id, False
        # placing from the start: a reconcile() between here and the
        # Originate must not take the missing channel for a call that ended
        active = ActiveCall(call_id=call_id, request=req, logged=[st.CALL], placing=True)
        self._active[call_id] = active
        if not self.ami.connected:
            await self._log(active, st.ERROR, "PBX unreachable: the AMI link is down")
            raise PBXUnavailable(call_id)
        if not req.first_is_phone:
            # A group rings if any member may answer: refused before ringing
            # only when none can.
            states = [self.ami.device_states.get(f"PJSIP/{m}") for m in req.members]
            if all(s == "INVALID" for s in states):
                await self._log(active, st.ERROR, f"unknown extension {','.join(req.members)}")
                return call_id, True
            if all(s in ("UNAVAILABLE", "INVALID") for s in states):
                await self._log(active, st.OPERATOR_OFFLINE, "endpoint not registered")
                return call_id, True
        await self._log(active, st.OPERATOR_CALLTO)
        d = defer.ensureDeferred(self._originate(active))
        d.addErrback(lambda f: log.failure("originate of {call_id} failed", f, call_id=call_id))
        return call_id, True

    def operator_outcome(self, call_id: str) -> defer.Deferred:
        """A Deferred firing with ``OPERATOR_PICKUP`` or the final status that
        came before it (extToPhone with ``async=false`` waits on this)."""
        active = self._active.get(call_id)
        if active is None:
            return defer.succeed(None)
        for status in active.logged:
            if status == st.OPERATOR_PICKUP or status in st.FINAL:
                return defer.succeed(status)
        d: defer.Deferred = defer.Deferred()
        active.operator_waiters.append(d)
        return d

    def first_leg_channel(self, req: CallRequest) -> str:
        """The dial string of the first leg, from configuration and checked values.

        A group is a Local channel into :data:`GROUP_CONTEXT` (``/n``: the
        pair must stay, ``;1`` runs the operator context once a member
        answered); :meth:`first_leg_variables` tells it whom to ring."""
        if req.is_group:
            return f"Local/s@{GROUP_CONTEXT}/n"
        if req.first_is_phone:
            return self.dialing.client_channel.format(phone=req.first, trunk=req.trunk)
        return self.dialing.operator_channel.format(sip=req.first)

    def first_leg_variables(self, req: CallRequest, call_id: str) -> dict[str, str]:
        """The channel variables of the first leg's Originate."""
        variables = {f"__{CALL_ID_VAR}": call_id}
        if req.is_group:
            variables[GROUP_DIAL_VAR] = "&".join(
                self.dialing.operator_channel.format(sip=m) for m in req.members
            )
            variables[GROUP_RING_VAR] = str(req.call_time_to_ext)
        return variables

    def client_channel(self, req: CallRequest) -> str:
        """The dial string of the client leg."""
        return self.dialing.client_channel.format(phone=req.phone, trunk=req.trunk)

    async def _originate(self, active: ActiveCall) -> None:
        from agi_app.ami import errors as ami_errors

        req = active.request
        shown = req.caller_id_for_employee or req.phone
        ring_ms = req.call_time_to_ext * 1000
        if req.is_group:
            # the group's Dial times the ringing and tells busy from no
            # answer; the Originate only must not cut it short
            ring_ms += 5000
        try:
            result = await self.ami.originate(
                self.first_leg_channel(req),
                context=self.dialing.context,
                exten="s",
                priority=1,
                caller_id=f'"{shown}" <{req.phone}>',
                timeout_ms=ring_ms,
                variables=self.first_leg_variables(req, active.call_id),
            )
        except (ami_errors.AMIDisconnected, ami_errors.AMITimeout) as e:
            # The outcome is unknown: the call may well be ringing.  The
            # FastAGI session, the channel events or reconcile() (after the
            # next login) settle it.
            active.placing = False
            log.warn("originate of {call_id}: outcome unknown ({e})", call_id=active.call_id, e=e)
            if self.ami.connected:
                # A timeout on a live link: no login, so no reconcile() will
                # come; decide from the channels once they are gone.
                self._schedule_settle(active)
            return
        except ami_errors.AMIActionError as e:
            active.placing = False
            await self._log(active, st.ERROR, f"originate refused: {e}")
            return
        except Exception as e:  # a bad dial string: the call must still end
            active.placing = False
            await self._log(active, st.ERROR, f"originate failed: {e}")
            return
        active.placing = False
        if result.success:
            await self._log(active, st.OPERATOR_PICKUP)
            return
        status, detail = st.operator_status_for_reason(result.reason)
        if result.reason == st.REASON_OTHER and not req.first_is_phone and not req.is_group:
            state = self.ami.device_states.get(f"PJSIP/{req.first}")
            if state in (None, "UNAVAILABLE", "UNKNOWN"):
                status, detail = st.OPERATOR_OFFLINE, "endpoint unreachable"
        await self._log(active, status, detail)

    # -- the FastAGI script -----------------------------------------------------

    async def operator_call(self, agi) -> None:
        """FastAGI ``operator_call``: the first leg answered; connect the client."""
        from agi_app.agi import errors as agi_errors

        try:
            call_id = validation.identifier(agi.args[0] if agi.args else "", "call_id")
        except validation.InvalidInput:
            await _report(agi, "NOTFOUND")
            return
        active = self._active.get(call_id) or await self._adopt(call_id)
        if (
            active is None
            or active.final
            # the client was dialled once already: never a second time
            or active.agi_sessions
            or st.CLIENT_CALLTO in active.logged
        ):
            await _report(agi, "NOTFOUND")
            return
        active.agi_sessions += 1
        try:
            await self._connect_client(agi, active)
        except agi_errors.AGIHangup:
            if self._stopping:
                return _left_open(active.call_id)
            # also a lost FastAGI connection (Asterisk stopped): the call
            # ended now, as far as anyone will ever tell us
            await self._end_after_hangup(
                active, "the first leg hung up", ended_at=self.clock.seconds()
            )
        except agi_errors.AGIError as e:
            if self._stopping:
                return _left_open(active.call_id)
            await self._end_after_hangup(
                active, f"FastAGI: {e}", ended_at=self.clock.seconds(), failed=True
            )
            # the operator is still on the line: the dialplan plays the error prompt
            try:
                await _report(agi, "ERROR")
            except agi_errors.AGIError:
                pass  # the session is gone (a timeout closes it)
        finally:
            active.agi_sessions -= 1
            self.recorder.finish(active.recording)

    async def _connect_client(self, agi, active: ActiveCall) -> None:
        req = active.request
        await self._log(active, st.OPERATOR_PICKUP)
        gone = False
        if req.playback_waiting:
            reply = await agi.exec_("Playback", "agi_app/please-wait")
            # -1: the channel hung up during the announcement (HANGUP may come
            # only after this reply).
            gone = reply.result_int < 0
        if gone or agi.hungup:
            await self._log(active, st.CLIENT_CANCEL, "hung up before the client was dialled")
            await agi.set_variable("AGI_APP_RESULT", "OK")
            return
        await self._start_recording(agi, active)
        # What the client sees: the operator's extension, or the first number.
        await agi.set_variable("CALLERID(all)", f'"" <{req.first}>')
        await self._log(active, st.CLIENT_CALLTO)
        options = "g"
        if req.limit_call_time:
            options += f"L({req.limit_call_time * 1000})"
        ring = str(self.dialing.call_time_to_client)
        await agi.exec_("Dial", self.client_channel(req), ring, options, timeout=None)
        dialstatus = (await agi.get_variable("DIALSTATUS")) or ""
        # Call control (hold, transfer, park...) moved the operator's channel
        # away and marked it: the conversation goes on elsewhere, so the final
        # status comes later, when the call's last channel hangs up.
        handoff = await agi.get_variable(HANDOFF_VAR)
        if handoff:
            if dialstatus.upper() == "ANSWER" and st.CLIENT_PICKUP not in active.logged:
                await self._log(active, st.CLIENT_PICKUP)
            log.info("{call_id}: handed over ({how})", call_id=active.call_id, how=handoff)
            await agi.set_variable("AGI_APP_RESULT", "OK")
            return
        if dialstatus.upper() == "ANSWER":
            talk = await self._answered_seconds(agi)
            if st.CLIENT_PICKUP not in active.logged:
                # The DialEnd event was missed (the AMI link was down when the
                # client answered): log it now, dated when it happened.
                at = self.clock.seconds() - talk if talk is not None else None
                await self._log(active, st.CLIENT_PICKUP, at=at)
            await self._finish(active, talk)
        else:
            status, detail = st.client_status_for_dialstatus(dialstatus)
            await self._log(active, status, detail)
        await agi.set_variable("AGI_APP_RESULT", "OK")

    @staticmethod
    async def _answered_seconds(agi) -> float | None:
        """The talk time Dial measured (``ANSWEREDTIME_MS``, else ``ANSWEREDTIME``)."""
        ms = _seconds(await agi.get_variable("ANSWEREDTIME_MS"))
        if ms is not None:
            return ms / 1000.0
        return _seconds(await agi.get_variable("ANSWEREDTIME"))

    async def _start_recording(self, agi, active: ActiveCall) -> None:
        active.recording = await self.recorder.start(
            agi, active.call_id, active.request.order_id
        )

    async def _restore_recording(self, active: ActiveCall) -> None:
        """After a restart: what became of the call's recording.  MixMonitor
        is started just before CLIENT_CALLTO is logged, into a file named
        from the call; one stored already is taken up (its size and duration
        are still to come), one the client answered before the restart but
        that was not stored yet is stored now."""
        if st.CLIENT_CALLTO not in active.logged:
            return
        stored = await self.store.call_recordings(active.call_id)
        if stored:
            active.recording = Recording(
                active.call_id, stored[0]["path"], record_id=stored[0]["record_id"]
            )
            return
        active.recording = self.recorder.expected(
            active.call_id, active.request.order_id, active.logged_at.get(st.CLIENT_CALLTO)
        )
        if st.CLIENT_PICKUP in active.logged:
            await self.recorder.store_it(active.recording)

    async def _end_after_hangup(
        self,
        active: ActiveCall,
        why: str,
        *,
        ended_at: float | None = None,
        failed: bool = False,
    ) -> None:
        """The call ended without the FastAGI session reporting how: end it
        from what was reached.  ``ended_at`` is when the conversation ended,
        if known; ``failed``: the session broke (not a hangup), so a client
        leg that never answered ends in ERROR."""
        if active.final:
            return
        try:
            await self._end_from_what_was_reached(active, why, ended_at, failed)
        finally:
            if active.final and not active.agi_sessions:
                self.recorder.finish(active.recording)

    async def _end_from_what_was_reached(
        self, active: ActiveCall, why: str, ended_at: float | None, failed: bool
    ) -> None:
        if st.CLIENT_PICKUP in active.logged:
            await self._finish(active, None, ended_at)
        elif failed and st.OPERATOR_PICKUP in active.logged:
            await self._log(active, st.ERROR, why)
        elif st.CLIENT_CALLTO in active.logged:
            await self._log(active, st.CLIENT_CANCEL, why)
        elif st.OPERATOR_PICKUP in active.logged:
            await self._log(active, st.CLIENT_CANCEL, f"{why} before the client was dialled")
        else:
            # The first leg never answered; its Hangup cause says why.
            status, detail = _first_leg_status(active.last_cause, why)
            await self._log(active, status, detail)

    async def _finish(
        self, active: ActiveCall, talk_seconds: float | None, ended_at: float | None = None
    ) -> None:
        """Log FINISH with the talk time: Dial's own figure, else from the
        pickup to ``ended_at``; unknown when the end was not seen (the call
        ended while no process or no AMI link was watching)."""
        if talk_seconds is None and active.pickup_time is not None and ended_at is not None:
            talk_seconds = max(0.0, ended_at - active.pickup_time)
        detail = f"talk {talk_seconds:.0f} s" if talk_seconds is not None else "talk time unknown"
        await self._log(active, st.FINISH, detail, talk_seconds=talk_seconds)

    # -- status log -------------------------------------------------------------

    async def _log(
        self,
        active: ActiveCall,
        status: str,
        detail: str | None = None,
        *,
        at: float | None = None,
        **extra,
    ):
        """Append ``status`` unless it is a repeat, out of order or after the end.

        ``at`` dates a status that is logged late; it is kept between the
        previous status of the call and now, so the call's times stay in order.
        """
        await active.lock.acquire()
        try:
            if active.final or status in active.logged:
                return None
            need = REQUIRES[active.request.kind].get(status)
            if need is not None and need not in active.logged:
                log.warn(
                    "{call_id}: {status} skipped, {need} not reached",
                    call_id=active.call_id,
                    status=status,
                    need=need,
                )
                return None
            now = self.clock.seconds()
            if at is not None:
                at = min(now, max(at, active.logged_at.get(need or "", at)))
                extra["time"] = iso_time(at)
            entry = await self.store.add_status(active.call_id, status, detail, **extra)
            if entry is None:  # the store had it final already (another node, a restart)
                self._ended(active, None)
                return None
            active.logged.append(status)
            active.logged_at[status] = at if at is not None else now
            if status == st.CLIENT_PICKUP:
                active.pickup_time = active.logged_at[status]
                await self.recorder.store_it(active.recording)
            if status in st.FINAL:
                self._ended(active, status)
            elif status == st.OPERATOR_PICKUP:
                self._tell_waiters(active, status)
            return entry
        finally:
            active.lock.release()

    def _ended(self, active: ActiveCall, status: str | None) -> None:
        active.final = True
        self._active.pop(active.call_id, None)
        self._tell_waiters(active, status)

    @staticmethod
    def _tell_waiters(active: ActiveCall, status: str | None) -> None:
        waiters, active.operator_waiters = active.operator_waiters, []
        for d in waiters:
            d.callback(status)

    async def _adopt(self, call_id: str) -> ActiveCall | None:
        """Rebuild an :class:`ActiveCall` from the store (after a restart).

        The FastAGI script and reconcile() may both ask for one call at once;
        they must get the same object, or each would follow the call alone.
        """
        waiting = self._adopting.get(call_id)
        if waiting is not None:
            d: defer.Deferred = defer.Deferred()
            waiting.append(d)
            return await d
        waiting = self._adopting[call_id] = []
        try:
            active = await self._load(call_id)
        except Exception:
            failure = Failure()
            del self._adopting[call_id]
            for d in waiting:
                d.errback(failure)
            raise
        del self._adopting[call_id]
        for d in waiting:
            d.callback(active)
        return active

    async def _load(self, call_id: str) -> ActiveCall | None:
        call = await self.store.get_call(call_id)
        if call is None or call.get("final_status"):
            return None
        params = call.get("params") or {}
        try:
            req = CallRequest(**params)
        except TypeError:
            return None
        entries = await self.store.statuses(call_id)
        if call_id in self._active:  # taken up meanwhile (placed, or adopted)
            return self._active[call_id]
        active = ActiveCall(call_id=call_id, request=req, logged=[e["status"] for e in entries])
        for e in entries:
            at = _parse_time(e["time"])
            if at is not None:
                active.logged_at[e["status"]] = at
        active.pickup_time = active.logged_at.get(st.CLIENT_PICKUP)
        self._active[call_id] = active
        try:
            await self._restore_recording(active)
        except Exception as e:  # the call is followed all the same
            log.warn("recording of {call_id} not restored: {e}", call_id=call_id, e=e)
        return active

    # -- AMI events -------------------------------------------------------------

    def _call_of(self, event) -> ActiveCall | None:
        call_id = _event_call_id(event)
        return self._active.get(call_id) if call_id else None

    def _on_channel_event(self, event) -> None:
        active = self._call_of(event)
        uniqueid = event.get("Uniqueid")
        # Only live channels: a stray event after a channel's Hangup must not
        # bring it back, or the call would wait for a Hangup that never comes.
        if (
            active is not None
            and uniqueid
            and uniqueid in self.ami.channels
            and event.get("Event", "").lower() != "hangup"
        ):
            active.channels.add(uniqueid)

    def _on_dial_end(self, event) -> None:
        if (event.get("DialStatus") or "").upper() != "ANSWER":
            return
        if _is_group_dial(event.get("Channel") or ""):
            return  # a member of the group answered: that is the operator, not the client
        active = self._call_of(event)
        if active is not None:
            d = defer.ensureDeferred(self._log(active, st.CLIENT_PICKUP))
            d.addErrback(lambda f: log.failure("CLIENT_PICKUP", f))

    def _on_hangup(self, event) -> None:
        active = self._call_of(event)
        if active is None:
            return
        active.channels.discard(event.get("Uniqueid"))
        active.last_cause = _int(event.get("Cause"))
        if active.ended_at is None and st.CLIENT_PICKUP in active.logged:
            # either party hanging up ends the conversation
            active.ended_at = self.clock.seconds()
        if not active.channels and active.agi_sessions == 0:
            self._schedule_settle(active)

    def _schedule_settle(self, active: ActiveCall) -> None:
        # Give a FastAGI session that is just finishing, or an
        # OriginateResponse on its way, the chance to report the real
        # outcome before deciding from what was reached.
        self.clock.callLater(self._hangup_grace, self._settle, active.call_id)

    def _settle(self, call_id: str) -> None:
        active = self._active.get(call_id)
        if (
            active is None
            or active.final
            or active.placing
            or active.agi_sessions
            or active.channels
        ):
            return
        if not self.ami.connected:
            # The channel list is stale; reconcile() decides after the next login.
            return
        if self._live_channels(call_id):
            return
        d = defer.ensureDeferred(
            self._end_after_hangup(active, "all channels hung up", ended_at=active.ended_at)
        )
        d.addErrback(lambda f: log.failure("settle", f))

    def _is_live(self, call_id: str) -> bool | None:
        return call_is_live(self.ami, call_id)

    def _live_channels(self, call_id: str) -> list:
        return [c for c in self.ami.channels.values() if _event_call_id(c) == call_id]

    # -- reconciliation ---------------------------------------------------------

    def _reconcile_logged(self) -> None:
        d = defer.ensureDeferred(self.reconcile())
        d.addErrback(lambda f: log.failure("reconcile", f))

    async def reconcile(self) -> int:
        """Close every call the store has open for this PBX that nothing on the
        PBX or in this process belongs to any more.  Returns how many it closed.

        Runs after each AMI (re)login, when the service has just resynced its
        channel list from the PBX.
        """
        closed = 0
        for call in await self.store.open_calls(pbx=self.pbx):
            if not self.ami.connected:
                break  # the link dropped again: the next login reconciles
            call_id = call["call_id"]
            active = self._active.get(call_id) or await self._adopt(call_id)
            if active is None:
                # open in the store but not adoptable (parameters of another
                # version): close it once nothing on the PBX belongs to it
                # (or it ended meanwhile: the store then refuses a second final)
                if not self._live_channels(call_id):
                    entry = await self.store.add_status(
                        call_id, st.ERROR, "no channel left on the PBX; call not resumable"
                    )
                    closed += entry is not None
                continue
            if active.final or active.placing:
                continue
            live = self._live_channels(call_id)
            # The list was just rebuilt from the PBX: it replaces what the
            # events said before the link dropped (Hangups may have been missed).
            active.channels = {c.get("Uniqueid") for c in live if c.get("Uniqueid")}
            if live or active.agi_sessions:
                continue
            await self._end_after_hangup(
                active, "no channel left on the PBX", ended_at=active.ended_at
            )
            closed += 1
        return closed


async def _report(agi, outcome: str) -> None:
    """Set ``AGI_APP_RESULT`` to ``outcome`` and end the session here.

    The FastAGI server reports ``OK`` for every script that returns normally,
    which would overwrite this; closing the connection first keeps it, and
    Asterisk goes on in the dialplan with ``AGISTATUS=SUCCESS``.
    """
    from agi_app.agi import RESULT_VARIABLE

    await agi.set_variable(RESULT_VARIABLE, outcome)
    agi.close()


def _is_group_dial(channel: str) -> bool:
    """``channel`` is the ``;2`` half of a group's Local channel (its Dial
    rings the members; the ``;1`` half dials the client)."""
    return channel.startswith(f"Local/s@{GROUP_CONTEXT}-") and channel.endswith(";2")


def _left_open(call_id: str) -> None:
    log.info("{call_id}: agi_app is stopping; the call stays open and the next start "
             "takes it up again", call_id=call_id)  # fmt: skip


def call_is_live(ami, call_id: str) -> bool | None:
    """Whether a channel of the call (by its ``AGI_APP_CALL_ID``) is on the
    PBX as the AMI link lists them; None while the link is down."""
    if not ami.connected:
        return None
    return any(_event_call_id(c) == call_id for c in ami.channels.values())


def _event_call_id(event) -> str | None:
    variables = getattr(event, "variables", None)
    if variables is None and hasattr(event, "get"):
        variables = {}
    value = variables.get(CALL_ID_VAR) if variables else None
    return value or None


#: Q.850 cause of a first leg that hung up unanswered -> (status, detail);
#: what Asterisk reports when its own dialing code sees these causes
_FIRST_LEG_CAUSES = {
    17: (st.OPERATOR_BUSY, "busy"),
    21: (st.OPERATOR_BUSY, "rejected"),
    18: (st.OPERATOR_NOANSWER, "no answer (no user responding)"),
    19: (st.OPERATOR_NOANSWER, "no answer"),
    20: (st.OPERATOR_OFFLINE, "endpoint unreachable (subscriber absent)"),
}


def _first_leg_status(cause: int | None, why: str) -> tuple[str, str]:
    """The final status of a call whose first leg hung up before answering."""
    if cause in _FIRST_LEG_CAUSES:
        status, detail = _FIRST_LEG_CAUSES[cause]
        return status, f"{detail} (cause {cause})"
    return st.ERROR, why if cause is None else f"{why} (cause {cause})"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _parse_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None
