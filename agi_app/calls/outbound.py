"""Calls to a client without an operator: callWithAnnouncement and
callWithInteractiveVoiceResponse (CONTRACT section 4).

The flow of both:

1. :meth:`OutboundCalls.call_with_announcement` / :meth:`~OutboundCalls.call_with_ivr`
   get checked values from the web layer, create the call in the store
   (``CALL``; idempotent on ``external_key``), log ``CLIENT_CALLTO`` and
   originate the client's number through the trunk into the dialplan context
   ``[agi-app-announcement]`` or ``[agi-app-ivr-call]`` with the call id in
   the inherited channel variable ``AGI_APP_CALL_ID``.
2. A failed Originate ends the call (``CLIENT_BUSY``, ``CLIENT_NOANSWER``,
   ``CLIENT_CANCEL`` or ``ERROR``).  When the client answers, the dialplan
   runs the FastAGI script ``announcement`` (plays the message, then
   ``FINISH`` with the time played) or ``ivr_call`` (runs the menu with
   :class:`agi_app.ivr.service.IVRService`: every choice an ``IVR_CHOICE``
   entry, a connection to an extension or number its ``OPERATOR_*``
   entries, then ``FINISH``).
3. Every call ends in exactly one final status whatever fails:
   :class:`CallSessions` ends a call whose channels all hung up with no
   FastAGI session left (e.g. FastAGI was down and the dialplan played the
   message itself), and after every AMI (re)connect closes the open calls of
   its kinds that nothing on the PBX belongs to any more.

:class:`CallLog` is the status writer both flows and the IVR share: it keeps
the order (a status only after the one it requires), writes no repeat (but
any number of ``IVR_CHOICE`` entries) and nothing after the final status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from agi_app import sounds, validation
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import REQUIRES, new_call_id
from agi_app.errors import PBXUnavailable

if TYPE_CHECKING:
    from agi_app.ivr.service import IVRService

__all__ = [
    "ANNOUNCEMENT_CONTEXT",
    "IVR_CALL_CONTEXT",
    "IVR_CHOICE",
    "CallLog",
    "CallSessions",
    "OutboundCalls",
    "Tracked",
    "client_status_for_reason",
]

log = Logger(namespace="agi_app.calls.outbound")

#: one choice of a caller in an IVR menu (never a final status)
IVR_CHOICE = "IVR_CHOICE"
#: the channel variable that ties the channels of a call to its id
CALL_ID_VAR = "AGI_APP_CALL_ID"
ANNOUNCEMENT_CONTEXT = "agi-app-announcement"
IVR_CALL_CONTEXT = "agi-app-ivr-call"
ANNOUNCEMENT_KIND = "callWithAnnouncement"
IVR_KIND = "callWithInteractiveVoiceResponse"



def client_status_for_reason(reason: int) -> tuple[str, str]:
    """Map a failed Originate's reason (to the client) to ``(status, detail)``."""
    if reason == st.REASON_BUSY:
        return st.CLIENT_BUSY, "busy"
    if reason == st.REASON_CONGESTION:
        return st.CLIENT_BUSY, "rejected"
    if reason == st.REASON_RING_TIMEOUT:
        return st.CLIENT_NOANSWER, "no answer"
    if reason == st.REASON_HANGUP:
        return st.CLIENT_CANCEL, "hung up before answering"
    return st.ERROR, f"client unreachable (originate reason {reason})"


class CallLog:
    """The history of one call this process drives (see the module docstring).

    :param store: the call log store
    :param call_id: the call
    :param logged: the statuses already in the store, oldest first
    :param requires: status -> the status it must follow
    """

    def __init__(
        self,
        store: Any,
        call_id: str,
        logged: Iterable[str] = (),
        requires: dict[str, str] | None = None,
    ):
        self.store = store
        self.call_id = call_id
        self.logged: list[str] = list(logged)
        self.requires = REQUIRES[st.ANNOUNCEMENT] if requires is None else requires
        self.final = any(s in st.FINAL for s in self.logged)
        self._lock = defer.DeferredLock()
        self._waiters: list[tuple[str, defer.Deferred]] = []

    def reached(self, status: str) -> bool:
        """True once ``status`` is logged."""
        return status in self.logged

    async def add(self, status: str, detail: str | None = None, **extra: Any) -> dict | None:
        """Append ``status`` unless it repeats, is out of order or comes after
        the final status; fires the new history entry, or None."""
        await self._lock.acquire()
        try:
            if self.final or (status != IVR_CHOICE and status in self.logged):
                return None
            need = self.requires.get(status)
            if need is not None and need not in self.logged:
                log.debug("{call_id}: {status} skipped, {need} not reached",
                          call_id=self.call_id, status=status, need=need)
                return None
            entry = await self.store.add_status(self.call_id, status, detail, **extra)
            if entry is None:  # the store had it final already
                self.final = True
                return None
            self.logged.append(status)
            if status in st.FINAL:
                self.final = True
            for wanted, d in list(self._waiters):
                if wanted == status or self.final:
                    self._waiters.remove((wanted, d))
                    d.callback(status)
            return entry
        finally:
            self._lock.release()

    def wait_for(self, status: str) -> defer.Deferred:
        """A Deferred firing with ``status`` once logged (or with the final
        status that made it impossible)."""
        if status in self.logged:
            return defer.succeed(status)
        if self.final:
            return defer.succeed(next(s for s in self.logged if s in st.FINAL))
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((status, d))
        return d


@dataclass
class Tracked:
    """A call a :class:`CallSessions` follows."""

    call_id: str
    kind: str
    params: dict[str, Any]
    log: CallLog
    agi_sessions: int = 0
    channels: set[str] = field(default_factory=set)
    pickup_time: float | None = None

    def talk_seconds(self, now: float) -> float | None:
        """Seconds since the pickup, if it was seen."""
        return None if self.pickup_time is None else max(0.0, now - self.pickup_time)


class CallSessions:
    """The calls of some kinds this process drives, and how each ends.

    It follows the AMI events of the channels carrying a call's id; when the
    last one hangs up and no FastAGI session of the call is running it calls
    ``settle(tracked)`` (after ``grace`` seconds, so a FastAGI session that is
    just finishing reports the real outcome first).  :meth:`reconcile` does
    the same for the open calls of its kinds after an AMI (re)connect.
    """

    def __init__(
        self,
        *,
        store: Any,
        ami: Any,
        clock: Any,
        kinds: Collection[str],
        settle: Callable[[Tracked, str], Awaitable[object]],
        pbx: str = "default",
        grace: float = 3.0,
        requires: dict[str, str] | None = None,
    ):
        self.store = store
        self.ami = ami
        self.clock = clock
        self.kinds = frozenset(kinds)
        self.requires = requires
        self._settle_cb = settle
        self.pbx = pbx
        self.grace = grace
        self._calls: dict[str, Tracked] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self.stopping = False

    def start(self) -> None:
        """Follow the AMI events; reconcile after every (re)connect."""
        self._unsubscribe.append(self.ami.subscribe(self._on_event))
        self._unsubscribe.append(self.ami.on_connect(lambda _ami: self._reconcile_logged()))

    def stop(self) -> None:
        """Stop following the AMI events; a session lost from now on is this
        process going away (``stopping``), not the call ending."""
        self.stopping = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def add(self, call_id: str, kind: str, params: dict[str, Any], logged: Iterable[str]
            ) -> Tracked:
        """Start following a call."""
        call_log = CallLog(self.store, call_id, logged, self.requires)
        tracked = Tracked(call_id, kind, dict(params), call_log)
        self._calls[call_id] = tracked
        return tracked

    def get(self, call_id: str) -> Tracked | None:
        """A call followed now, if any."""
        return self._calls.get(call_id)

    async def find(self, call_id: str) -> Tracked | None:
        """A call followed now, or an open one of our kinds read back from the
        store (after a restart of this process)."""
        tracked = self._calls.get(call_id)
        if tracked is not None:
            return tracked
        call = await self.store.get_call(call_id)
        if call is None or call.get("final_status") or call.get("kind") not in self.kinds:
            return None
        entries = await self.store.statuses(call_id)
        return self.add(call_id, call["kind"], call.get("params") or {},
                        [e["status"] for e in entries])

    async def finish_after(
        self,
        tracked: Tracked,
        body: Callable[[], Awaitable[object]],
        *,
        hung_up: str,
        ended: str,
        finish: Callable[[Tracked, str], Awaitable[object]],
    ) -> None:
        """Run a FastAGI session's ``body()``, then ``finish(tracked, ended)``;
        if the caller hangs up meanwhile, ``finish(tracked, hung_up)`` and the
        hangup goes on -- unless this process is stopping: then the session
        was lost with it, and the call stays open for the next start."""
        from agi_app.agi import errors as agi_errors

        try:
            await body()
        except agi_errors.AGIHangup:
            if not self.stopping:
                await finish(tracked, hung_up)
            raise
        await finish(tracked, ended)

    def forget(self, tracked: Tracked) -> None:
        """Stop following a call that has ended."""
        if self._calls.get(tracked.call_id) is tracked:
            del self._calls[tracked.call_id]

    def _on_event(self, event: Any) -> None:
        variables = getattr(event, "variables", {}) or {}
        call_id = variables.get(CALL_ID_VAR)
        tracked = self._calls.get(call_id) if call_id else None
        if tracked is None:
            return
        uid = event.get("Uniqueid")
        if not uid:
            return
        if (event.get("Event") or "").lower() == "hangup":
            tracked.channels.discard(uid)
            if not tracked.channels and not tracked.agi_sessions:
                why = "all channels hung up"
                self.clock.callLater(self.grace, self._maybe_settle, tracked, why)
        else:
            tracked.channels.add(uid)

    def _maybe_settle(self, tracked: Tracked, why: str) -> None:
        if tracked.log.final or tracked.channels or tracked.agi_sessions:
            if tracked.log.final:
                self.forget(tracked)
            return
        d = defer.ensureDeferred(self._settle(tracked, why))
        d.addErrback(lambda f: log.failure("settling {call_id}", f, call_id=tracked.call_id))

    async def _settle(self, tracked: Tracked, why: str) -> None:
        await self._settle_cb(tracked, why)
        if tracked.log.final:
            self.forget(tracked)

    def _reconcile_logged(self) -> None:
        d = defer.ensureDeferred(self.reconcile())
        d.addErrback(lambda f: log.failure("reconcile", f))

    async def reconcile(self) -> int:
        """Close the open calls of our kinds on this PBX that no channel and no
        FastAGI session belongs to any more; returns how many were closed."""
        closed = 0
        for call in await self.store.open_calls(pbx=self.pbx):
            if call.get("kind") not in self.kinds:
                continue
            tracked = await self.find(call["call_id"])
            if tracked is None or tracked.log.final or tracked.agi_sessions:
                continue
            live = {
                uid for uid, c in self.ami.channels.items()
                if (getattr(c, "variables", {}) or {}).get(CALL_ID_VAR) == tracked.call_id
            }  # fmt: skip
            tracked.channels = live
            if live:
                continue
            await self._settle(tracked, "no channel left on the PBX")
            closed += 1
        return closed


class OutboundCalls:
    """callWithAnnouncement and callWithInteractiveVoiceResponse.

    :param store: the call log (:class:`agi_app.store.Store`)
    :param ami: the PBX link (:class:`agi_app.ami.service.AMIService`)
    :param dialing: the ``[dialing]`` configuration section
    :param clock: an ``IReactorTime``
    :param ivr: the :class:`~agi_app.ivr.service.IVRService` that runs menus
    :param voice_files: returns the known voiceFileIDs (default: the prompts
        in the sounds folder); None when unknown (then any valid name goes)
    """

    def __init__(
        self,
        *,
        store: Any,
        ami: Any,
        dialing: Any,
        clock: Any,
        ivr: IVRService | None = None,
        voice_files: Callable[[], Collection[str] | None] | None = None,
        pbx: str = "default",
        new_id: Callable[[], str] | None = None,
        grace: float = 3.0,
    ):
        self.store = store
        self.ami = ami
        self.dialing = dialing
        self.clock = clock
        self.ivr = ivr
        self.pbx = pbx
        self._voice_files = voice_files or _shipped_prompts
        self._new_id = new_id or new_call_id
        self.sessions = CallSessions(
            store=store, ami=ami, clock=clock, kinds={ANNOUNCEMENT_KIND, IVR_KIND},
            settle=self._settle, pbx=pbx, grace=grace,
        )  # fmt: skip

    def start(self) -> None:
        """Follow the AMI events this service needs."""
        self.sessions.start()

    def stop(self) -> None:
        """Drop the AMI subscriptions."""
        self.sessions.stop()

    def register_scripts(self, registry: Any) -> None:
        """Register the FastAGI scripts ``announcement`` and ``ivr_call``."""
        registry.register("announcement", self.announcement)
        registry.register("ivr_call", self.ivr_call)

    # -- checking input -------------------------------------------------------

    def check_voice_file(self, value: object, field: str = "voiceFileID") -> str:
        """A voiceFileID: a prompt name the application knows (400 otherwise)."""
        name = sounds.check_name(value, field)
        known = self._voice_files()
        if known is not None and name not in known:
            raise validation.InvalidInput(
                field, f"{field} {name!r} is not a known recorded message", code=f"unknown_{field}"
            )
        return name

    def check_ivr(self, value: object, field: str = "ivrName") -> str:
        """An ivrName: a menu defined in the IVR configuration (400 otherwise)."""
        if self.ivr is None:
            raise validation.InvalidInput(field, "no IVR menus are configured",
                                          code=f"unknown_{field}")
        return self.ivr.check_menu(value, field)

    # -- placing calls ----------------------------------------------------------

    async def call_with_announcement(
        self, phone: str, voice: str, *, trunk: str | None = None,
        order_id: str | None = None, external_key: str | None = None,
    ) -> tuple[str, bool]:  # fmt: skip
        """Call ``phone`` and play the recorded message ``voice``; returns
        ``(call_id, created)`` (``created`` False for a repeated external_key)."""
        params = {"phone_number": phone, "voiceFileID": voice,
                  "trunk": trunk or self.dialing.default_trunk}  # fmt: skip
        return await self._place(ANNOUNCEMENT_KIND, params, ANNOUNCEMENT_CONTEXT,
                                 {"AGI_APP_VOICE": voice}, order_id, external_key)

    async def call_with_ivr(
        self, phone: str, ivr_name: str, *, trunk: str | None = None,
        order_id: str | None = None, external_key: str | None = None,
    ) -> tuple[str, bool]:  # fmt: skip
        """Call ``phone`` and run the IVR menu ``ivr_name``; returns ``(call_id, created)``."""
        params = {"phone_number": phone, "ivrName": ivr_name,
                  "trunk": trunk or self.dialing.default_trunk}  # fmt: skip
        return await self._place(IVR_KIND, params, IVR_CALL_CONTEXT, {}, order_id, external_key)

    async def _place(
        self, kind: str, params: dict[str, Any], context: str, variables: dict[str, str],
        order_id: str | None, external_key: str | None,
    ) -> tuple[str, bool]:  # fmt: skip
        call, created = await self.store.create_call(
            call_id=self._new_id(), kind=kind, sip=None, phone=params["phone_number"],
            order_id=order_id, external_key=external_key, params=params, pbx=self.pbx,
        )  # fmt: skip
        call_id = call["call_id"]
        if not created:
            return call_id, False
        tracked = self.sessions.add(call_id, kind, params, [st.CALL])
        if not self.ami.connected:
            await tracked.log.add(st.ERROR, "PBX unreachable: the AMI link is down")
            self.sessions.forget(tracked)
            raise PBXUnavailable(call_id)
        await tracked.log.add(st.CLIENT_CALLTO)
        d = defer.ensureDeferred(self._originate(tracked, context, variables))
        d.addErrback(lambda f: log.failure("originate of {call_id}", f, call_id=call_id))
        return call_id, True

    async def _originate(self, tracked: Tracked, context: str, variables: dict[str, str]) -> None:
        from agi_app.ami import errors as ami_errors

        params = tracked.params
        channel = self.dialing.client_channel.format(
            phone=params["phone_number"], trunk=params["trunk"]
        )
        try:
            result = await self.ami.originate(
                channel,
                context=context,
                exten="s",
                priority=1,
                timeout_ms=self.dialing.call_time_to_client * 1000,
                variables={f"__{CALL_ID_VAR}": tracked.call_id, **variables},
            )
        except (ami_errors.AMIDisconnected, ami_errors.AMITimeout) as e:
            # The call may well be ringing: the events or reconcile() settle it.
            log.warn("originate of {call_id}: outcome unknown ({e})", call_id=tracked.call_id, e=e)
            return
        except ami_errors.AMIActionError as e:
            await self._end(tracked, st.ERROR, f"originate refused: {e}")
            return
        if result.success:
            await self._picked_up(tracked)
            return
        status, detail = client_status_for_reason(result.reason)
        await self._end(tracked, status, detail)

    async def _picked_up(self, tracked: Tracked) -> None:
        if await tracked.log.add(st.CLIENT_PICKUP) is not None:
            tracked.pickup_time = self.clock.seconds()

    async def _end(self, tracked: Tracked, status: str, detail: str | None, **extra: Any) -> None:
        await tracked.log.add(status, detail, **extra)
        if tracked.log.final and not tracked.agi_sessions and not tracked.channels:
            self.sessions.forget(tracked)

    async def _settle(self, tracked: Tracked, why: str) -> None:
        """No channel and no FastAGI session left: end the call from what was reached."""
        if tracked.log.reached(st.CLIENT_PICKUP):
            talk = tracked.talk_seconds(self.clock.seconds())
            await tracked.log.add(st.FINISH, why, talk_seconds=talk)
        elif tracked.log.reached(st.CLIENT_CALLTO):
            await tracked.log.add(st.CLIENT_CANCEL, why)
        else:
            await tracked.log.add(st.ERROR, why)

    # -- the FastAGI scripts ----------------------------------------------------

    async def _session_call(self, agi: Any, kind: str) -> Tracked:
        call_id = validation.identifier(agi.args[0] if agi.args else "", "call_id")
        tracked = await self.sessions.find(call_id)
        if tracked is None or tracked.kind != kind or tracked.log.final:
            raise LookupError(f"no open {kind} call {call_id}")
        return tracked

    async def announcement(self, agi: Any) -> None:
        """FastAGI ``announcement``: the client answered; play the message."""
        from agi_app.agi import errors as agi_errors

        tracked = await self._session_call(agi, ANNOUNCEMENT_KIND)
        tracked.agi_sessions += 1
        try:
            await self._picked_up(tracked)
            voice = tracked.params["voiceFileID"]
            started = self.clock.seconds()
            try:
                await agi.answer()
                await agi.stream_file(sounds.playback_name(voice), "", timeout=3600)
            except agi_errors.AGIHangup:
                if self.sessions.stopping:
                    raise  # left open: the next start takes the call up again
                played = self.clock.seconds() - started
                await self._end(tracked, st.FINISH,
                                f"{voice}: the client hung up after {played:.1f} s",
                                talk_seconds=played)  # fmt: skip
                raise
            except agi_errors.AGICommandFailed:
                await self._end(tracked, st.ERROR, f"the PBX has no recorded message {voice}")
                await agi.hangup()
                return
            played = self.clock.seconds() - started
            await self._end(tracked, st.FINISH, f"{voice} played ({played:.1f} s)",
                            talk_seconds=played)  # fmt: skip
        finally:
            tracked.agi_sessions -= 1

    async def ivr_call(self, agi: Any) -> None:
        """FastAGI ``ivr_call``: the client answered; run the call's menu."""
        tracked = await self._session_call(agi, IVR_KIND)
        if self.ivr is None:
            raise LookupError("no IVR menus are configured")
        tracked.agi_sessions += 1
        try:
            await self._picked_up(tracked)
            await agi.answer()
            params, ivr = tracked.params, self.ivr
            await self.sessions.finish_after(
                tracked,
                lambda: ivr.run(agi, tracked.log, params["ivrName"], params["phone_number"]),
                hung_up="the client hung up",
                ended="the IVR ended the call",
                finish=self._finish,
            )
        finally:
            tracked.agi_sessions -= 1

    async def _finish(self, tracked: Tracked, why: str) -> None:
        talk = tracked.talk_seconds(self.clock.seconds())
        await self._end(tracked, st.FINISH, why, talk_seconds=talk)


def _shipped_prompts() -> Collection[str] | None:
    try:
        return set(sounds.prompt_names())
    except sounds.SoundsError:
        return None
