"""Calls to a client without an operator: callWithAnnouncement and
callWithInteractiveVoiceResponse (CONTRACT section 4).

The flow of both:

1. :meth:`OutboundCalls.call_with_announcement` / :meth:`~OutboundCalls.call_with_ivr`
   get checked values from the web layer, create the call (``CALL``;
   idempotent on ``external_key``), log ``CLIENT_CALLTO`` and originate the
   client's number through the trunk into the dialplan context
   ``[agi-app-announcement]`` or ``[agi-app-ivr-call]`` with the call id in
   the inherited channel variable ``AGI_APP_CALL_ID``.
2. A failed Originate ends the call (``CLIENT_BUSY``, ``CLIENT_NOANSWER``,
   ``CLIENT_CANCEL`` or ``ERROR``).  When the client answers, the dialplan
   runs the FastAGI script ``announcement`` (plays the message, then
   ``FINISH``) or ``ivr_call`` (runs the menu with the :class:`MenuRunner`
   it was given -- the IVR service: every choice an ``IVR_CHOICE`` entry, a
   connection to an extension or number its ``OPERATOR_*`` entries, then
   ``FINISH``).
3. Everything else -- a call whose channels all hung up with no FastAGI
   session left (e.g. FastAGI was down and the dialplan played the message
   itself), a restart of agi_app -- is the one call lifecycle's
   (:mod:`agi_app.calls.lifecycle`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from agi_app import sounds, validation
from agi_app.agi import errors as agi_errors
from agi_app.ami import errors as ami_errors
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import CALL_ID_VAR, Call, Lifecycle
from agi_app.calls.service import PBX_DOWN
from agi_app.errors import InvalidInput, PBXUnavailable

__all__ = [
    "ANNOUNCEMENT_CONTEXT",
    "IVR_CALL_CONTEXT",
    "MenuRunner",
    "OutboundCalls",
    "client_status_for_reason",
]

log = Logger(namespace="agi_app.calls.outbound")

ANNOUNCEMENT_CONTEXT = "agi-app-announcement"
IVR_CALL_CONTEXT = "agi-app-ivr-call"


class MenuRunner(Protocol):
    """What IVR calls need of the IVR service (passed in: the calls package
    does not import the IVR one)."""

    def check_menu(self, value: object, field: str = "ivrName") -> str:
        """A menu name that exists (:class:`~agi_app.errors.InvalidInput` otherwise)."""

    def run(self, agi: Any, call: Call, menu: str, caller: str | None = None) -> Awaitable[None]:
        """Run ``menu`` for the call on ``agi``, logging every choice."""


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


class OutboundCalls:
    """callWithAnnouncement and callWithInteractiveVoiceResponse.

    :param lifecycle: the application's :class:`~agi_app.calls.lifecycle.Lifecycle`
    :param dialing: the ``[dialing]`` configuration section
    :param menus: the IVR service that runs menus (None: no IVR calls)
    :param voice_files: returns the known voiceFileIDs (default: the prompts
        in the sounds folder); None when unknown (then any valid name goes)
    """

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        dialing: Any,
        menus: MenuRunner | None = None,
        voice_files: Callable[[], Collection[str] | None] | None = None,
    ):
        self.lifecycle = lifecycle
        self.ami = lifecycle.ami
        self.clock = lifecycle.clock
        self.dialing = dialing
        self.menus = menus
        self._voice_files = voice_files or _shipped_prompts

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
        if self.menus is None:
            raise InvalidInput(field, "no IVR menus are configured", code=f"unknown_{field}")
        return self.menus.check_menu(value, field)

    # -- placing calls ----------------------------------------------------------

    async def call_with_announcement(
        self, phone: str, voice: str, *, trunk: str | None = None,
        order_id: str | None = None, external_key: str | None = None,
    ) -> tuple[str, bool]:  # fmt: skip
        """Call ``phone`` and play the recorded message ``voice``; returns
        ``(call_id, created)`` (``created`` False for a repeated external_key)."""
        params = {"phone_number": phone, "voiceFileID": voice,
                  "trunk": trunk or self.dialing.default_trunk}  # fmt: skip
        return await self._place(st.ANNOUNCEMENT, params, ANNOUNCEMENT_CONTEXT,
                                 {"AGI_APP_VOICE": voice}, order_id, external_key)  # fmt: skip

    async def call_with_ivr(
        self, phone: str, ivr_name: str, *, trunk: str | None = None,
        order_id: str | None = None, external_key: str | None = None,
    ) -> tuple[str, bool]:  # fmt: skip
        """Call ``phone`` and run the IVR menu ``ivr_name``; returns ``(call_id, created)``."""
        params = {"phone_number": phone, "ivrName": ivr_name,
                  "trunk": trunk or self.dialing.default_trunk}  # fmt: skip
        return await self._place(st.IVR_CALL, params, IVR_CALL_CONTEXT, {}, order_id, external_key)

    async def _place(
        self, kind: str, params: dict[str, Any], context: str, variables: dict[str, str],
        order_id: str | None, external_key: str | None,
    ) -> tuple[str, bool]:  # fmt: skip
        call, created = await self.lifecycle.create(
            kind, params, sip=None, phone=params["phone_number"], order_id=order_id,
            external_key=external_key, placing=True,
        )  # fmt: skip
        if not created:
            return call.call_id, False
        if not self.ami.connected:
            call.placing = False
            await self.lifecycle.log(call, st.ERROR, PBX_DOWN)
            raise PBXUnavailable(call.call_id)
        await self.lifecycle.log(call, st.CLIENT_CALLTO)
        d = defer.ensureDeferred(self._originate(call, context, variables))
        d.addErrback(lambda f: log.failure("originate of {id}", f, id=call.call_id))
        return call.call_id, True

    async def _originate(self, call: Call, context: str, variables: dict[str, str]) -> None:
        params = call.params
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
                variables={f"__{CALL_ID_VAR}": call.call_id, **variables},
            )
        except (ami_errors.AMIDisconnected, ami_errors.AMITimeout) as e:
            # The call may well be ringing: the events or reconcile() settle it.
            call.placing = False
            log.warn("originate of {call_id}: outcome unknown ({e})", call_id=call.call_id, e=e)
            if self.ami.connected:
                self.lifecycle.schedule_settle(call)
            return
        except ami_errors.AMIActionError as e:
            call.placing = False
            await self.lifecycle.log(call, st.ERROR, f"originate refused: {e}")
            return
        call.placing = False
        if result.success:
            await self.lifecycle.log(call, st.CLIENT_PICKUP)
            return
        status, detail = client_status_for_reason(result.reason)
        await self.lifecycle.log(call, status, detail)

    # -- the FastAGI scripts ----------------------------------------------------

    async def _session_call(self, agi: Any, kind: str) -> Call:
        call_id = validation.identifier(agi.args[0] if agi.args else "", "call_id")
        call = await self.lifecycle.find(call_id)
        if call is None or call.kind != kind or call.final:
            raise LookupError(f"no open {kind} call {call_id}")
        return call

    async def announcement(self, agi: Any) -> None:
        """FastAGI ``announcement``: the client answered; play the message."""
        call = await self._session_call(agi, st.ANNOUNCEMENT)
        lifecycle = self.lifecycle
        async with lifecycle.session(call):
            await lifecycle.log(call, st.CLIENT_PICKUP)
            voice = call.params["voiceFileID"]
            try:
                await agi.answer()
                await agi.stream_file(sounds.playback_name(voice), "", timeout=3600)
            except agi_errors.AGIHangup:
                if not lifecycle.stopping:
                    talk = call.talk_seconds(self.clock.seconds()) or 0.0
                    await lifecycle.finish(call, f"{voice}: the client hung up after {talk:.1f} s",
                                           ended_at=self.clock.seconds())  # fmt: skip
                else:
                    await lifecycle.session_lost(call, "the client hung up")
                raise
            except agi_errors.AGICommandFailed:
                await lifecycle.log(call, st.ERROR, f"the PBX has no recorded message {voice}")
                await agi.hangup()
                return
            talk = call.talk_seconds(self.clock.seconds()) or 0.0
            await lifecycle.finish(call, f"{voice} played ({talk:.1f} s)",
                                   ended_at=self.clock.seconds())  # fmt: skip

    async def ivr_call(self, agi: Any) -> None:
        """FastAGI ``ivr_call``: the client answered; run the call's menu."""
        call = await self._session_call(agi, st.IVR_CALL)
        if self.menus is None:
            raise LookupError("no IVR menus are configured")
        lifecycle = self.lifecycle
        async with lifecycle.session(call):
            await lifecycle.log(call, st.CLIENT_PICKUP)
            await agi.answer()
            try:
                await self.menus.run(agi, call, call.params["ivrName"], call.params["phone_number"])
            except agi_errors.AGIHangup:
                await lifecycle.session_lost(call, "the client hung up")
                raise
            await lifecycle.finish(call, "the IVR ended the call", ended_at=self.clock.seconds())


def _shipped_prompts() -> Collection[str] | None:
    try:
        return set(sounds.prompt_names())
    except sounds.SoundsError:
        return None
