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
   Originate maps its reason here; everything else -- a hangup, a lost
   FastAGI connection, channels that vanished, a restart of agi_app -- is
   the one call lifecycle's (:mod:`agi_app.calls.lifecycle`), which writes
   every status in order and settles calls from what they reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agi_app import validation
from agi_app.agi import RESULT_VARIABLE
from agi_app.agi import errors as agi_errors
from agi_app.ami import errors as ami_errors
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import CALL_ID_VAR, PICKUP_UNSEEN, Call, Lifecycle
from agi_app.errors import Conflict, InvalidInput, PBXUnavailable

__all__ = ["CALL_ID_VAR", "PBX_DOWN", "CallRequest", "CallService"]

log = Logger(namespace="agi_app.calls")

#: the ERROR detail of a call that was created but never placed (AMI link down)
PBX_DOWN = "PBX unreachable: the AMI link is down"
#: set by call control on a channel it moves elsewhere (hold, transfer, park...)
HANDOFF_VAR = "AGI_APP_HANDOFF"
#: set on the first leg once the client was dialled (the dialplan's fallback
#: then dials nobody)
DIALLED_VAR = "AGI_APP_DIALLED"
#: the FastAGI script the dialplan runs when the first leg answers
OPERATOR_SCRIPT = "operator_call"
#: dialplan context that rings several extensions together (a callback with
#: several ``src_num``); the first leg is a Local channel into it
GROUP_CONTEXT = "agi-app-group"
#: channel variables the group context reads: the dial string of the members
#: (``PJSIP/200&PJSIP/201``) and their ring time in seconds
GROUP_DIAL_VAR = "AGI_APP_GROUP"
GROUP_RING_VAR = "AGI_APP_RING"
#: the dialplan function that adds a SIP header to the INVITE of the channel
#: it is set on (an Originate sets it on the new channel before dialling)
HEADER_FUNCTION = "PJSIP_HEADER(add,{name})"


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

    ``auto_answer``: ring the operator's phone with the auto-answer headers
    (``[dialing] auto_answer_headers``); None (the default) is ``[dialing]
    operator_auto_answer``.  A number (phoneToPhone) or a group is never
    auto-answered.
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
    auto_answer: bool | None = None

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
        """The parameters that make two requests with one external_key "the
        same" (stored with the call).  ``auto_answer`` is left out while
        unset, so a request stored before it existed and its repeat now
        still compare equal."""
        params = asdict(self)
        if self.auto_answer is None:
            del params["auto_answer"]
        return params


class CallService:
    """Places operator-first calls; the lifecycle follows each to its one
    final status.

    :param lifecycle: the application's :class:`~agi_app.calls.lifecycle.Lifecycle`
        of the PBX (its store, AMI link and clock are used)
    :param dialing: the ``[dialing]`` configuration section
    :param auto_answer_headers: ``(name, value)`` SIP headers of an
        auto-answered operator leg (``DialingConfig.auto_answer``), checked
    """

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        dialing: Any,
        auto_answer_headers: Sequence[tuple[str, str]] = (),
    ):
        self.lifecycle = lifecycle
        self.store = lifecycle.store
        self.ami = lifecycle.ami
        self.clock = lifecycle.clock
        self.dialing = dialing
        self.auto_answer_headers = tuple(auto_answer_headers)
        self.auto_answer_default = bool(getattr(dialing, "operator_auto_answer", False))
        for kind in st.OPERATOR_FIRST_KINDS:
            lifecycle.add_kind(
                kind,
                lambda params: CallRequest(**params),
                client_dial=lambda call: self.client_channel(call.request),
            )

    def register_scripts(self, registry: Any) -> None:
        """Register this service's FastAGI scripts in ``registry``."""
        registry.register(OPERATOR_SCRIPT, self.operator_call)

    # -- placing a call ---------------------------------------------------------

    async def place(self, req: CallRequest, pbx: str | None = None) -> tuple[str, bool]:
        """Create and start a call; returns ``(call_id, created)``.

        ``pbx``: the PBX the request asks for; this service places calls on
        its lifecycle's PBX only (another is a 400 ``unknown_pbx``; with
        several PBXs, :class:`agi_app.pbxs.PBXCalls` picks the service).

        A repeated ``external_key`` with the same parameters returns the
        existing call with ``created`` False and places nothing; with other
        parameters the store raises ``ExternalKeyConflict``.  With the AMI link
        down the call is logged as CALL then ERROR and
        :class:`~agi_app.errors.PBXUnavailable` is raised -- again for a
        repeat of that request: a retry is never answered as if a call had
        been placed (a new ``external_key`` places a new call).
        """
        if pbx is not None and pbx != self.lifecycle.pbx:
            raise InvalidInput("pbx", f"pbx {pbx!r} is not a configured PBX", code="unknown_pbx")
        if req.auto_answer and not self.can_auto_answer:
            raise Conflict(
                "auto-answer is not available: [dialing] auto_answer_headers is empty or "
                "operator_channel is not PJSIP",
                code="auto_answer_unavailable",
            )
        # placing from the start: a reconcile() between here and the
        # Originate must not take the missing channel for a call that ended
        call, created = await self.lifecycle.create(
            req.kind, req.params(), sip=req.first, phone=req.phone, order_id=req.order_id,
            external_key=req.external_key, request=req, placing=True,
        )  # fmt: skip
        if not created:
            if await self._never_placed(call.call_id):
                raise PBXUnavailable(call.call_id)
            return call.call_id, False
        if not self.ami.connected:
            call.placing = False
            await self.lifecycle.log(call, st.ERROR, PBX_DOWN)
            raise PBXUnavailable(call.call_id)
        if not req.first_is_phone:
            # A group rings if any member may answer: refused before ringing
            # only when none can.
            states = [self.ami.device_states.get(f"PJSIP/{m}") for m in req.members]
            if all(s == "INVALID" for s in states):
                call.placing = False
                unknown = ",".join(req.members)
                await self.lifecycle.log(call, st.ERROR, f"unknown extension {unknown}")
                return call.call_id, True
            if all(s in ("UNAVAILABLE", "INVALID") for s in states):
                call.placing = False
                await self.lifecycle.log(call, st.OPERATOR_OFFLINE, "endpoint not registered")
                return call.call_id, True
        await self.lifecycle.log(call, st.OPERATOR_CALLTO)
        d = defer.ensureDeferred(self._originate(call))
        d.addErrback(lambda f: log.failure("originate of {id} failed", f, id=call.call_id))
        return call.call_id, True

    async def _never_placed(self, call_id: str) -> bool:
        entries = await self.store.statuses(call_id)
        return [e["status"] for e in entries] == [st.CALL, st.ERROR] and (
            entries[-1]["detail"] == PBX_DOWN
        )

    def operator_outcome(self, call_id: str) -> defer.Deferred:
        """A Deferred firing with ``OPERATOR_PICKUP`` or the final status that
        came before it (extToPhone with ``async=false`` waits on this)."""
        call = self.lifecycle.get(call_id)
        if call is None:
            return defer.succeed(None)
        return self.lifecycle.wait_for(call, {st.OPERATOR_PICKUP})

    @property
    def can_auto_answer(self) -> bool:
        """Headers are configured and the operator leg is a PJSIP channel
        (``PJSIP_HEADER`` exists only there)."""
        return bool(self.auto_answer_headers) and self.dialing.operator_channel.startswith(
            "PJSIP/"
        )

    def auto_answers(self, req: CallRequest) -> bool:
        """Whether the first leg of ``req`` rings with the auto-answer
        headers: asked for (or ``[dialing] operator_auto_answer``), one
        extension rung directly (a Local channel of a group has no SIP
        headers), and :attr:`can_auto_answer`."""
        wanted = req.auto_answer if req.auto_answer is not None else self.auto_answer_default
        return bool(wanted) and not req.first_is_phone and not req.is_group and (
            self.can_auto_answer
        )

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
        """The channel variables of the first leg's Originate: the call id
        (inherited by every channel of the call), and what the dialplan
        needs to connect the client by itself if agi_app is unreachable when
        the first leg answers (see ``[agi-app-operator]``): the client's dial
        string, ring time, talk limit, the waiting announcement, the number
        the client sees and the recording file; and, when the operator's
        phone should answer by itself, the auto-answer SIP headers as
        ``PJSIP_HEADER(add,Name)`` assignments.  Every value is built from
        checked input and configuration."""
        variables = {
            f"__{CALL_ID_VAR}": call_id,
            "AGI_APP_CLIENT": self.client_channel(req),
            "AGI_APP_CLIENT_RING": str(self.dialing.call_time_to_client),
            "AGI_APP_WAIT": "1" if req.playback_waiting else "0",
            "AGI_APP_SHOWN": req.first,
            "AGI_APP_RECORDING": self.lifecycle.recorder.pbx_path(req.order_id, call_id),
        }
        if req.limit_call_time:
            variables["AGI_APP_LIMIT_MS"] = str(req.limit_call_time * 1000)
        if req.is_group:
            variables[GROUP_DIAL_VAR] = "&".join(
                self.dialing.operator_channel.format(sip=m) for m in req.members
            )
            variables[GROUP_RING_VAR] = str(req.call_time_to_ext)
        if self.auto_answers(req):
            # Set on the new channel before it dials: the INVITE carries them.
            for name, value in self.auto_answer_headers:
                variables[HEADER_FUNCTION.format(name=name)] = value
        return variables

    def client_channel(self, req: CallRequest) -> str:
        """The dial string of the client leg."""
        return self.dialing.client_channel.format(phone=req.phone, trunk=req.trunk)

    async def _originate(self, call: Call) -> None:
        req: CallRequest = call.request
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
                variables=self.first_leg_variables(req, call.call_id),
            )
        except (ami_errors.AMIDisconnected, ami_errors.AMITimeout) as e:
            # The outcome is unknown: the call may well be ringing.  The
            # FastAGI session, the channel events or reconcile() (after the
            # next login) settle it.
            call.placing = False
            log.warn("originate of {call_id}: outcome unknown ({e})", call_id=call.call_id, e=e)
            if self.ami.connected:
                # A timeout on a live link: no login, so no reconcile() will
                # come; decide from the channels once they are gone.
                self.lifecycle.schedule_settle(call)
            return
        except ami_errors.AMIActionError as e:
            call.placing = False
            await self.lifecycle.log(call, st.ERROR, f"originate refused: {e}")
            return
        except Exception as e:  # a bad dial string: the call must still end
            call.placing = False
            await self.lifecycle.log(call, st.ERROR, f"originate failed: {e}")
            return
        call.placing = False
        if result.success:
            await self.lifecycle.log(call, st.OPERATOR_PICKUP)
            return
        status, detail = st.operator_status_for_reason(result.reason)
        if result.reason == st.REASON_OTHER and not req.first_is_phone and not req.is_group:
            state = self.ami.device_states.get(f"PJSIP/{req.first}")
            if state in (None, "UNAVAILABLE", "UNKNOWN"):
                status, detail = st.OPERATOR_OFFLINE, "endpoint unreachable"
        await self.lifecycle.log(call, status, detail)

    # -- the FastAGI script -----------------------------------------------------

    async def operator_call(self, agi: Any) -> None:
        """FastAGI ``operator_call``: the first leg answered; connect the client."""
        try:
            call_id = validation.identifier(agi.args[0] if agi.args else "", "call_id")
        except validation.InvalidInput:
            await _report(agi, "NOTFOUND")
            return
        call = await self.lifecycle.find(call_id)
        if (
            call is None
            or call.final
            or call.kind not in st.OPERATOR_FIRST_KINDS
            # the client was dialled once already: never a second time
            or call.agi_sessions
            or call.reached(st.CLIENT_CALLTO)
        ):
            await _report(agi, "NOTFOUND")
            return
        async with self.lifecycle.session(call):
            try:
                await self._connect_client(agi, call)
            except agi_errors.AGIHangup:
                # also a lost FastAGI connection (Asterisk stopped): the call
                # ended now, as far as anyone will ever tell us
                await self.lifecycle.session_lost(call, "the first leg hung up")
            except agi_errors.AGIError as e:
                await self.lifecycle.session_lost(call, f"FastAGI: {e}", failed=True)
                if self.lifecycle.stopping:
                    return
                # the operator is still on the line: the dialplan plays the error prompt
                try:
                    await _report(agi, "ERROR")
                except agi_errors.AGIError:
                    pass  # the session is gone (a timeout closes it)

    async def _connect_client(self, agi: Any, call: Call) -> None:
        req: CallRequest = call.request
        lifecycle = self.lifecycle
        await lifecycle.log(call, st.OPERATOR_PICKUP)
        gone = False
        if req.playback_waiting:
            reply = await agi.exec_("Playback", "agi_app/please-wait")
            # -1: the channel hung up during the announcement (HANGUP may come
            # only after this reply).
            gone = reply.result_int < 0
        if gone or agi.hungup:
            await lifecycle.log(call, st.CLIENT_CANCEL, "hung up before the client was dialled")
            return  # the FastAGI server reports OK when the script returns
        call.recording = await lifecycle.recorder.start(agi, call.call_id, req.order_id)
        # What the client sees: the operator's extension, or the first number.
        await agi.set_variable("CALLERID(all)", f'"" <{req.first}>')
        await lifecycle.log(call, st.CLIENT_CALLTO)
        # Should agi_app go away during the call, the dialplan must not dial
        # the client a second time when the script's session fails.
        await agi.set_variable(DIALLED_VAR, "1")
        options = "g"
        if req.limit_call_time:
            options += f"L({req.limit_call_time * 1000})"
        ring = str(self.dialing.call_time_to_client)
        await agi.exec_("Dial", self.client_channel(req), ring, options, timeout=None)
        ended_at = self.clock.seconds()
        dialstatus = ((await agi.get_variable("DIALSTATUS")) or "").upper()
        # Call control (hold, transfer, park...) moved the operator's channel
        # away and marked it: the conversation goes on elsewhere, so the final
        # status comes later, when the call's last channel hangs up.
        handoff = await agi.get_variable(HANDOFF_VAR)
        if handoff:
            if dialstatus == "ANSWER":
                await lifecycle.log(call, st.CLIENT_PICKUP)
            log.info("{call_id}: handed over ({how})", call_id=call.call_id, how=handoff)
            return
        if dialstatus == "ANSWER":
            if not call.reached(st.CLIENT_PICKUP):
                # The DialEnd event was missed (the AMI link was down when the
                # client answered).  Dial's ANSWEREDTIME is the operator
                # leg's time up, not the client's, so the moment is unknown:
                # logged as when the client was dialled, talk time unknown.
                await lifecycle.log(call, st.CLIENT_PICKUP, PICKUP_UNSEEN,
                                    at=call.logged_at.get(st.CLIENT_CALLTO))  # fmt: skip
            await lifecycle.finish(call, ended_at=ended_at)
        else:
            status, detail = st.client_status_for_dialstatus(dialstatus)
            await lifecycle.log(call, status, detail)


async def _report(agi, outcome: str) -> None:
    """Set ``AGI_APP_RESULT`` to ``outcome`` and end the session here.

    The FastAGI server reports ``OK`` for every script that returns normally,
    which would overwrite this; closing the connection first keeps it, and
    Asterisk goes on in the dialplan with ``AGISTATUS=SUCCESS``.
    """
    await agi.set_variable(RESULT_VARIABLE, outcome)
    agi.close()
