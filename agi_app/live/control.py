"""Call control: the actions of CONTRACT section 5 on a live call of an
extension, and the call model's ``hangupCall`` / ``attendedCallTransfer``.

Every input is checked before anything is sent to the PBX: the action name,
``send_dst`` (an extension of this PBX or a phone number,
:mod:`agi_app.validation` rules), the extension (it must exist on the PBX)
and the call (the extension must take part in it, as the
:class:`~agi_app.live.tracker.CallTracker` sees it).  Then each action is a few
AMI actions on channel uniqueids, into the contexts of
``dialplan/extensions.conf``:

=================  ==========================================================
transfer           the other party dials ``send_dst`` (agi-app-transfer), the
                   extension's channel is hung up (agi-app-hold,release)
attended_transfer  the other party waits on music on hold, the extension
                   consults ``send_dst`` (agi-app-consult); when it hangs up
                   the target and the waiting party are connected
eavesdrop          ``send_dst`` is rung; on answer it listens (ChanSpy ``q``)
whisper            ... and talks to the extension only (ChanSpy ``w``)
conference         ... and talks to both parties (ChanSpy ``B``)
hold               Asterisk 22 has no AMI Hold: the other party is redirected
                   to music on hold, the extension to silence (agi-app-hold)
offhold            the two are bridged again (AMI ``Bridge``)
park               AMI ``Park`` of the other party (its parking space is in
                   the answer), then the extension's channel is hung up
pickup             ``send_dst`` is rung; on answer it takes the call ringing at
                   the extension (PickupChan)
hangup             every channel of the call is hung up
=================  ==========================================================

Before it moves the extension's own channel (transfer, attended_transfer,
hold, park) the channel variable ``AGI_APP_HANDOFF`` is set on it to the
action's name, so a FastAGI script running on that channel can tell the
channel was moved by call control rather than hung up.

A transferred call keeps its id (its channels carry ``AGI_APP_CALL_ID``, which
every channel they dial inherits).  For a call agi_app placed, call control
reports each hand-over through ``on_transfer(call_id, from, to)``: a blind
transfer once the PBX accepted it, an attended one when it completes (the
target, answered, is bridged with the waiting party in
``agi-app-xfer-complete``, or the waiting party reaches it by itself).  And
the recording goes on: ``leg_recording(call_id)`` names the file of the next
leg, handed to the dialplan in the inherited variable
``AGI_APP_LEG_RECORDING``; the party the call goes to starts it when it
answers (``agi-app-leg-recording``), which ``on_leg_recorded(call_id)`` reports.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agi_app import validation
from agi_app.ami.errors import AMIActionError, AMIDisconnected, AMITimeout
from agi_app.ami.message import variable_assignment
from agi_app.errors import AppError, PBXUnavailable
from agi_app.live.tracker import (
    CALL_ID_VAR,
    HOLD_CONTEXT,
    STATE_RING,
    STATE_RINGING,
    CallTracker,
    Leg,
    TrackedCall,
)

__all__ = [
    "ACTIONS",
    "ActionNotPossible",
    "CallControl",
    "CallNotFound",
    "ControlError",
    "Destination",
    "PBXRefused",
    "PBXUnavailable",
    "UnknownExtension",
    "handed_over",
]

log = Logger(namespace="agi_app.live.control")

#: every action of ``PUT /extension/{id}/current_calls/{call_api_id}``
ACTIONS = (
    "transfer",
    "attended_transfer",
    "eavesdrop",
    "whisper",
    "conference",
    "hold",
    "offhold",
    "park",
    "pickup",
)
#: the actions that need no ``send_dst``
WITHOUT_DESTINATION = frozenset({"hold", "offhold", "park"})
#: the channel variable set on an extension's channel that call control moves
HANDOFF_VAR = "AGI_APP_HANDOFF"

TRANSFER_CONTEXT = "agi-app-transfer"
CONSULT_CONTEXT = "agi-app-consult"
#: the extension of HOLD_CONTEXT that hangs up an extension that handed its call over
RELEASE_EXTEN = "release"
#: where the target of an attended transfer is connected to the waiting party
XFER_COMPLETE_CONTEXT = "agi-app-xfer-complete"
#: the subroutine that records a transferred call's next leg
LEG_RECORDING_CONTEXT = "agi-app-leg-recording"
#: the inherited channel variable naming that leg's file (as the PBX sees it)
LEG_RECORDING_VAR = "AGI_APP_LEG_RECORDING"
SPY_CONTEXT = "agi-app-spy"
PICKUP_CONTEXT = "agi-app-pickup"

_SHOWN = re.compile(r"[^0-9A-Za-z _.+-]")


class ControlError(AppError):
    """A call-control request that cannot be carried out; ``status`` is the
    HTTP status the API answers with, ``code`` its error code."""

    status = 409
    code = "not_possible"

    def __init__(self, message: str, code: str | None = None, field: str | None = None):
        super().__init__(message, code=code, field=field)


class UnknownExtension(ControlError):
    """The extension does not exist on the PBX (404)."""

    status = 404
    code = "unknown_extension"


class CallNotFound(ControlError):
    """No such live call, or the extension takes no part in it (404)."""

    status = 404
    code = "unknown_call"


class ActionNotPossible(ControlError):
    """The call is not in a state the action applies to (409): hold of a call
    that is not connected, pickup of a call that is not ringing..."""

    status = 409
    code = "not_possible"


class PBXRefused(ControlError):
    """Asterisk refused an AMI action (409); ``message`` says why."""

    status = 409
    code = "pbx_refused"


@dataclass(frozen=True)
class Destination:
    """Where ``send_dst`` leads: a dial string built from checked input."""

    #: the value asked for (an extension or a number)
    value: str
    #: the dial string (``PJSIP/1001``, ``PJSIP/380501234567@pstn``)
    dial: str
    #: the extension, when ``value`` is one
    extension: str | None
    #: seconds it may ring
    ring: int


@dataclass
class _Handover:
    """A transfer of a call agi_app placed that is not seen through yet."""

    #: uniqueid of the party that stays (the client)
    peer: str
    from_party: str
    to: str
    #: an attended transfer whose completion is still to be reported
    attended: bool
    #: a recording of the next leg is still to start
    recording: bool


class CallControl:
    """Carries out call-control actions on the calls the tracker sees.

    :param ami: the PBX link (:class:`agi_app.ami.service.AMIService`)
    :param tracker: the live calls (:class:`agi_app.live.tracker.CallTracker`)
    :param dialing: the ``[dialing]`` section (dial string templates, ring times)
    :param clock: an ``IReactorTime``
    :param store: the call log, for ``hangupCall`` of a call that has ended
    :param park_timeout: seconds to wait for Asterisk to report the parking space
    :param on_transfer: ``(call_id, from, to)``: a call agi_app placed was
        handed over from an extension (or number) to another
    :param leg_recording: ``call_id`` -> the file (as the PBX sees it) to
        record the call's next leg into, or None when it is not recorded
    :param on_leg_recorded: ``call_id``: that recording started
    (the three may return a Deferred or a coroutine; a failure is logged,
    the transfer itself stands)
    """

    def __init__(
        self,
        *,
        ami: Any,
        tracker: CallTracker,
        dialing: Any,
        clock: Any,
        store: Any = None,
        park_timeout: float = 3.0,
        new_id: Callable[[], str] | None = None,
        on_transfer: Callable[[str, str, str], object] | None = None,
        leg_recording: Callable[[str], object] | None = None,
        on_leg_recorded: Callable[[str], object] | None = None,
    ):
        self.ami = ami
        self.tracker = tracker
        self.dialing = dialing
        self.clock = clock
        self.store = store
        self.park_timeout = park_timeout
        self._new_id = new_id or (lambda: f"agiapp-{uuid.uuid4().hex}")
        self.on_transfer = on_transfer
        self.leg_recording = leg_recording
        self.on_leg_recorded = on_leg_recorded
        #: call id -> its transfer still to be seen through (followed from
        #: the AMI events only while there is one)
        self._handovers: dict[str, _Handover] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    # -- checking input -------------------------------------------------------

    @staticmethod
    def check_action(action: object) -> str:
        """The action name, or :class:`~agi_app.validation.InvalidInput`."""
        if action is None or action == "":
            raise validation.InvalidInput("action", "action is required", code="missing_action")
        if not isinstance(action, str) or action not in ACTIONS:
            raise validation.InvalidInput(
                "action", f"action must be one of {', '.join(ACTIONS)}", code="invalid_action"
            )
        return action

    def check_extension(self, extension: object, field: str = "extension_id") -> str:
        """A checked extension id that exists on the PBX (404 otherwise)."""
        ext = validation.extension(extension, field)
        self._connected()
        if self.tracker.is_trunk(ext) or not self._known_extension(ext):
            raise UnknownExtension(f"extension {ext} does not exist on the PBX", field=field)
        return ext

    def destination(self, value: object, field: str = "send_dst") -> Destination:
        """Resolve ``send_dst``: a known extension of the PBX, else a phone
        number dialled through the default trunk; anything else is a 400."""
        text = value
        try:
            ext = validation.extension(text, field)
        except validation.InvalidInput as e:
            if e.code.startswith("missing_"):
                raise
            ext = None
        if ext is not None and not self.tracker.is_trunk(ext) and self._known_extension(ext):
            dial = self.dialing.operator_channel.format(sip=ext)
            return Destination(ext, _checked_dial(dial, field), ext, self.dialing.call_time_to_ext)
        try:
            number = validation.phone(text, field)
        except validation.InvalidInput:
            raise validation.InvalidInput(
                field, f"{field} must be an extension of this PBX or a phone number"
            ) from None
        dial = self.dialing.client_channel.format(phone=number, trunk=self.dialing.default_trunk)
        ring = self.dialing.call_time_to_client
        return Destination(number, _checked_dial(dial, field), None, ring)

    def _reachable(self, dst: Destination, field: str) -> None:
        """An extension that is not registered would only ring into the void."""
        if dst.extension is None:
            return
        state = self.ami.device_states.get(f"{self.tracker.extension_tech}/{dst.extension}")
        if state == "UNAVAILABLE":
            raise ActionNotPossible(
                f"extension {dst.extension} is offline", code=f"{field}_offline", field=field
            )

    def _known_extension(self, ext: str) -> bool:
        state = self.ami.device_states.get(f"{self.tracker.extension_tech}/{ext}")
        return state is not None and state != "INVALID"

    def _connected(self) -> None:
        if not self.ami.connected:
            raise PBXUnavailable(message="the PBX is unreachable (AMI link down)")

    # -- the API's entry points -------------------------------------------------

    def current_calls(self, extension: object) -> list[dict[str, Any]]:
        """``call_list`` of an extension (checked; 404 for an unknown one)."""
        ext = self.check_extension(extension)
        return self.tracker.calls_of_extension(ext)

    async def act(
        self, extension: object, call_api_id: object, action: object, send_dst: object = None
    ) -> dict[str, Any]:
        """Carry out ``action`` on ``extension``'s call ``call_api_id``.

        Fires with extra answer fields (``{"parking_space": "701"}`` for
        park, else ``{}``) once the PBX accepted the actions.  Raises
        :class:`~agi_app.validation.InvalidInput` (400) or a
        :class:`ControlError` before anything is sent.
        """
        name = self.check_action(action)
        dst = None
        if name not in WITHOUT_DESTINATION:
            dst = self.destination(send_dst)
        ext = self.check_extension(extension)
        call, own = self._call_of(ext, call_api_id)
        if dst is not None and dst.extension == ext:
            raise validation.InvalidInput("send_dst", "send_dst is the extension itself")
        if dst is not None:
            self._reachable(dst, "send_dst")
        handler = getattr(self, f"_{name}")
        try:
            result = await handler(own, dst)
        except AMIDisconnected:
            raise PBXUnavailable(message="the PBX is unreachable (AMI link down)") from None
        except AMITimeout:
            raise PBXUnavailable(message="the PBX did not answer in time") from None
        except AMIActionError as e:
            raise PBXRefused(f"the PBX refused the {name}: {e.message}") from None
        log.info("{action} on call {call} of {ext}{dst}", action=name, call=call.call_api_id,
                 ext=ext, dst=f" to {dst.value}" if dst else "")
        return result or {}

    async def hangup(self, extension: object, call_api_id: object) -> None:
        """``DELETE .../current_calls/{call_api_id}``: hang the whole call up."""
        ext = self.check_extension(extension)
        call, _own = self._call_of(ext, call_api_id)
        await self._hangup_call(call)

    async def hangup_call(self, call_id: object) -> None:
        """``hangupCall``: hang up the call with this ``generalCallID``."""
        cid = validation.identifier(call_id, "generalCallID")
        self._connected()
        call = self.tracker.call(cid)
        if call is None:
            await self._not_live(cid)
        await self._hangup_call(call)  # type: ignore[arg-type]

    async def transfer_call(self, call_id: object, phone_number: object) -> dict[str, Any]:
        """``attendedCallTransfer``: the first party of the call (the operator
        of a click-to-call) consults ``phone_number``, then hands the call over."""
        dst = self.destination(phone_number, "phone_number")
        cid = validation.identifier(call_id, "generalCallID")
        self._connected()
        call = self.tracker.call(cid)
        if call is None:
            await self._not_live(cid)
        assert call is not None
        own = self._first_party(call)
        if own is None:
            raise ActionNotPossible("the call has no party that can transfer it")
        if dst.extension is not None and dst.extension == own.extension:
            raise validation.InvalidInput("phone_number", "phone_number is the transferring party")
        self._reachable(dst, "phone_number")
        try:
            return await self._attended_transfer(own, dst) or {}
        except AMIDisconnected:
            raise PBXUnavailable(message="the PBX is unreachable (AMI link down)") from None
        except AMIActionError as e:
            raise PBXRefused(f"the PBX refused the transfer: {e.message}") from None

    async def _not_live(self, call_id: str) -> None:
        call = await self.store.get_call(call_id) if self.store is not None else None
        if call is None:
            raise CallNotFound(f"no call {call_id}", field="generalCallID")
        if call.get("final_status"):
            raise ActionNotPossible(
                f"call {call_id} has ended ({call['final_status']})", code="call_ended"
            )
        raise ActionNotPossible(f"call {call_id} has no live channel on the PBX", code="not_live")

    # -- finding things ---------------------------------------------------------

    def _call_of(self, ext: str, call_api_id: object) -> tuple[TrackedCall, Leg]:
        cid = validation.identifier(call_api_id, "call_api_id")
        call = self.tracker.call(cid)
        own = self.tracker.leg_of(call, ext) if call is not None else None
        if call is None or own is None:
            raise CallNotFound(f"extension {ext} has no current call {cid}", field="call_api_id")
        return call, own

    def _first_party(self, call: TrackedCall) -> Leg | None:
        parties = [leg for leg in call.live_legs() if leg.party]
        for leg in parties:
            if leg.originated:
                return leg
        for leg in parties:
            if leg.extension:
                return leg
        return parties[0] if parties else None

    def _peer(self, own: Leg) -> Leg:
        peer = self.tracker.peer_of(own)
        if peer is None:
            raise ActionNotPossible("the call has no other party")
        return peer

    def _talking_peer(self, own: Leg) -> Leg:
        peer = self._peer(own)
        if not own.bridge or peer.bridge != own.bridge:
            raise ActionNotPossible("the call is not connected", code="not_connected")
        return peer

    # -- the actions ------------------------------------------------------------

    async def _transfer(self, own: Leg, dst: Destination) -> None:
        peer = self._peer(own)
        held = peer.context == HOLD_CONTEXT and not peer.bridge
        if not held:
            peer = self._talking_peer(own)
        call_id = _agi_call_id(own)
        recording = await self._leg_file(call_id)
        # the target inherits the leg's file from the party that dials it
        await self._setvars(peer, AGI_APP_TARGET=dst.dial, AGI_APP_RING=str(dst.ring),
                            **recording)  # fmt: skip
        await self._setvars(own, **{HANDOFF_VAR: "transfer"})
        await self.ami.redirect(
            peer.uniqueid, TRANSFER_CONTEXT, "s", 1,
            extra_channel=own.uniqueid, extra_context=HOLD_CONTEXT, extra_exten=RELEASE_EXTEN,
            extra_priority=1,
        )  # fmt: skip
        handover = self._hand_over(call_id, own, peer, dst, attended=False, recording=recording)
        if call_id and handover is not None:
            await self._transferred(call_id, handover)

    async def _attended_transfer(self, own: Leg, dst: Destination) -> None:
        peer = self._talking_peer(own)
        call_id = _agi_call_id(own)
        recording = await self._leg_file(call_id)
        # The waiting party knows the target too: if the extension hangs up
        # while the target still rings, it is sent there itself.  Whoever
        # dials the target hands it the file of the next leg.
        await self._setvars(peer, AGI_APP_TARGET=dst.dial, AGI_APP_RING=str(dst.ring),
                            **recording)  # fmt: skip
        await self._setvars(
            own,
            AGI_APP_TARGET=dst.dial,
            AGI_APP_RING=str(dst.ring),
            AGI_APP_RETURNED="",
            __AGI_APP_PEER=peer.uniqueid,
            **recording,
            **{HANDOFF_VAR: "attended_transfer"},
        )
        await self.ami.redirect(
            peer.uniqueid, HOLD_CONTEXT, "s", 1,
            extra_channel=own.uniqueid, extra_context=CONSULT_CONTEXT, extra_exten="s",
            extra_priority=1,
        )  # fmt: skip
        # reported when it completes (see _on_bridge_enter)
        self._hand_over(call_id, own, peer, dst, attended=True, recording=recording)

    async def _hold(self, own: Leg, dst: None) -> None:
        peer = self._talking_peer(own)
        await self._setvars(own, **{HANDOFF_VAR: "hold"})
        await self.ami.redirect(
            peer.uniqueid, HOLD_CONTEXT, "s", 1,
            extra_channel=own.uniqueid, extra_context=HOLD_CONTEXT, extra_exten="holder",
            extra_priority=1,
        )  # fmt: skip

    async def _offhold(self, own: Leg, dst: None) -> None:
        peer = self._peer(own)
        if peer.context != HOLD_CONTEXT or peer.bridge or own.bridge:
            raise ActionNotPossible("the call is not on hold", code="not_on_hold")
        if own.context != HOLD_CONTEXT:
            # The holder's Wait() sends no event of the classes agi_app reads, and
            # the BridgeLeave of the redirect may still show the old context:
            # ask the PBX where the extension's channel is now.
            where = await self.ami.getvar(own.uniqueid, "CONTEXT")
            if where != HOLD_CONTEXT:
                raise ActionNotPossible("the call is not on hold", code="not_on_hold")
        await self.ami.action("Bridge", Channel1=own.uniqueid, Channel2=peer.uniqueid)

    async def _park(self, own: Leg, dst: None) -> dict[str, Any]:
        peer = self._talking_peer(own)
        parked: defer.Deferred = defer.Deferred()

        def seen(event: Any) -> None:
            if event.get("ParkeeUniqueid") == peer.uniqueid and not parked.called:
                parked.callback(event.get("ParkingSpace"))

        unsubscribe = self.ami.subscribe(seen, "ParkedCall")
        try:
            await self._setvars(own, **{HANDOFF_VAR: "park"})
            await self.ami.action("Park", Channel=peer.uniqueid, TimeoutChannel=own.name)
            parked.addTimeout(self.park_timeout, self.clock)
            try:
                space = await parked
            except defer.TimeoutError:
                raise ActionNotPossible("the PBX did not report a parking space") from None
        finally:
            unsubscribe()
        # Parking leaves the parker alone in the old bridge: release it.
        await self._hangup_quietly(own)
        return {"parking_space": space}

    async def _eavesdrop(self, own: Leg, dst: Destination) -> None:
        await self._spy(own, dst, "eavesdrop")

    async def _whisper(self, own: Leg, dst: Destination) -> None:
        await self._spy(own, dst, "whisper")

    async def _conference(self, own: Leg, dst: Destination) -> None:
        await self._spy(own, dst, "conference")

    async def _spy(self, own: Leg, dst: Destination, mode: str) -> None:
        if own.answered is None:
            raise ActionNotPossible("the call is not answered yet", code="not_connected")
        ext = _shown(own.extension or "")
        caller_id = f'"{mode} {ext}" <{ext}>'
        await self._originate(dst, SPY_CONTEXT, mode, {"AGI_APP_SPY": own.uniqueid}, caller_id)

    async def _pickup(self, own: Leg, dst: Destination) -> None:
        if own.answered is not None or own.state not in (STATE_RING, STATE_RINGING):
            raise ActionNotPossible("the call is not ringing at the extension", code="not_ringing")
        peer = self.tracker.peer_of(own)
        number = _shown(peer.caller_num or "") if peer is not None else ""
        name = _shown(peer.caller_name or "") if peer is not None else ""
        await self._originate(
            dst, PICKUP_CONTEXT, "s", {"AGI_APP_PICKUP": own.uniqueid}, f'"{name}" <{number}>'
        )

    # -- transfers of calls agi_app placed ----------------------------------------

    async def _leg_file(self, call_id: str | None) -> dict[str, str]:
        """The channel variable that names the file of the call's next leg:
        empty when the call is not recorded (a file of an earlier transfer
        must not be recorded into again); none without ``leg_recording``."""
        if self.leg_recording is None:
            return {}
        path = None
        if call_id:
            try:
                path = await _deferred(self.leg_recording(call_id))
            except Exception:
                log.failure("recording of the next leg of {call_id}", call_id=call_id)
        return {f"__{LEG_RECORDING_VAR}": path or ""}

    def _hand_over(
        self, call_id: str | None, own: Leg, peer: Leg, dst: Destination, *,
        attended: bool, recording: dict[str, str],
    ) -> _Handover | None:  # fmt: skip
        """Follow a transfer of a call agi_app placed until it is reported
        and its next leg's recording started (or the party that stays hangs
        up); a transfer of the same call before replaces it."""
        if not call_id:
            return None
        handover = _Handover(
            peer=peer.uniqueid,
            from_party=_party(own),
            to=dst.value,
            attended=attended and self.on_transfer is not None,
            recording=bool(recording.get(f"__{LEG_RECORDING_VAR}"))
            and self.on_leg_recorded is not None,
        )
        self._handovers[call_id] = handover
        self._follow()
        self._settled(call_id, handover)
        return handover

    def _follow(self) -> None:
        """Listen to the events that see transfers through while one is
        pending, and only then."""
        if self._handovers and not self._unsubscribe:
            self._unsubscribe = [
                self.ami.subscribe(self._on_bridge_enter, "BridgeEnter"),
                self.ami.subscribe(self._on_mixmonitor, "MixMonitorStart"),
                self.ami.subscribe(self._on_hangup, "Hangup"),
            ]
        elif not self._handovers and self._unsubscribe:
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            self._unsubscribe = []

    def _pending(self, event: Any) -> tuple[str, _Handover] | tuple[None, None]:
        variables = getattr(event, "variables", None) or {}
        call_id = variables.get(CALL_ID_VAR) or ""
        handover = self._handovers.get(call_id)
        return (call_id, handover) if handover is not None else (None, None)

    def _settled(self, call_id: str, handover: _Handover) -> None:
        if not (handover.attended or handover.recording):
            if self._handovers.get(call_id) is handover:
                del self._handovers[call_id]
            self._follow()

    def _on_bridge_enter(self, event: Any) -> None:
        # An attended transfer completes when the target enters the bridge of
        # agi-app-xfer-complete, or (the extension hung up while the target
        # rang) when the waiting party, sent to dial it, is bridged with it.
        call_id, handover = self._pending(event)
        if handover is None or not handover.attended:
            return
        context = event.get("Context")
        if context == XFER_COMPLETE_CONTEXT or (
            context == TRANSFER_CONTEXT and event.get("Uniqueid") == handover.peer
        ):
            handover.attended = False
            self._settled(call_id, handover)
            d = defer.ensureDeferred(self._transferred(call_id, handover))
            d.addErrback(lambda f: log.failure("transfer of {call_id}", f, call_id=call_id))

    def _on_mixmonitor(self, event: Any) -> None:
        call_id, handover = self._pending(event)
        if handover is None or not handover.recording:
            return
        if event.get("Context") != LEG_RECORDING_CONTEXT:
            return
        handover.recording = False
        self._settled(call_id, handover)
        if self.on_leg_recorded is not None:
            d = _deferred(self.on_leg_recorded(call_id))
            d.addErrback(lambda f: log.failure("recording of {call_id}", f, call_id=call_id))

    def _on_hangup(self, event: Any) -> None:
        # the party that stays is gone: nothing of its transfer is to come
        uid = event.get("Uniqueid")
        for call_id, handover in list(self._handovers.items()):
            if handover.peer == uid:
                handover.attended = handover.recording = False
                self._settled(call_id, handover)

    async def _transferred(self, call_id: str, handover: _Handover) -> None:
        if self.on_transfer is None:
            return
        try:
            await _deferred(self.on_transfer(call_id, handover.from_party, handover.to))
        except Exception:
            log.failure("transfer of {call_id} not reported", call_id=call_id)

    # -- AMI helpers ------------------------------------------------------------

    async def _setvars(self, leg: Leg, **values: str) -> None:
        for name, value in values.items():
            await self.ami.setvar(leg.uniqueid, name, value)

    async def _originate(
        self, dst: Destination, context: str, exten: str, variables: dict[str, str],
        caller_id: str,
    ) -> None:  # fmt: skip
        """Originate ``dst`` into ``context`` and return once Asterisk queued
        it (the outcome shows in the tracker and on the phones)."""
        pairs: list[tuple[str, Any]] = [
            ("Channel", dst.dial),
            ("Context", context),
            ("Exten", exten),
            ("Priority", 1),
            ("CallerID", caller_id),
            ("Timeout", dst.ring * 1000),
            ("ChannelId", self._new_id()),
            ("Async", "true"),
        ]
        pairs += [("Variable", variable_assignment(k, v)) for k, v in variables.items()]
        await self.ami.action("Originate", pairs)

    async def _hangup_call(self, call: TrackedCall) -> None:
        legs = call.live_legs()
        results = await defer.DeferredList(
            [defer.ensureDeferred(self._hangup_quietly(leg)) for leg in legs], consumeErrors=True
        )
        for ok, failure in results:
            if not ok:
                if failure.check(AMIDisconnected, AMITimeout):
                    raise PBXUnavailable(message="the PBX is unreachable (AMI link down)")
                failure.raiseException()

    async def _hangup_quietly(self, leg: Leg) -> None:
        """Hang a channel up; one that is already gone is fine."""
        try:
            await self.ami.hangup(leg.uniqueid)
        except AMIActionError as e:
            if "no such channel" not in e.message.lower():
                raise


def handed_over(leg: Leg) -> bool:
    """Whether a leg left its call to another party through call control:
    an extension released after a blind transfer, or one that consulted the
    target of an attended transfer.  Its hangup does not end the call."""
    return leg.context == CONSULT_CONTEXT or (
        leg.context == HOLD_CONTEXT and leg.exten == RELEASE_EXTEN
    )


def _deferred(result: object) -> defer.Deferred:
    """A hook's result as a Deferred (it may return a value, a Deferred or
    a coroutine)."""
    if inspect.isawaitable(result):
        return defer.ensureDeferred(result)  # type: ignore[arg-type]
    return defer.succeed(result)


def _agi_call_id(leg: Leg) -> str | None:
    """agi_app's id of the leg's call, if agi_app placed it."""
    return (leg.call.call_id if leg.call is not None else None) or leg.call_id


def _party(leg: Leg) -> str:
    """How a TRANSFER entry names a party: its extension, else its number."""
    if leg.extension:
        return leg.extension
    number = (leg.dial_string or "").split("@", 1)[0].rsplit("/", 1)[-1]
    return _shown(number or leg.caller_num or "") or "?"


def _shown(text: str) -> str:
    """Text safe inside an Originate ``CallerID`` header (no quotes, brackets)."""
    return _SHOWN.sub("", text)[:40]


def _checked_dial(dial: str, field: str) -> str:
    for ch in "\r\n\x00,&|()\"'`\\;":
        if ch in dial:
            raise validation.InvalidInput(field, f"{field} leads to a dial string agi_app refuses")
    return dial
