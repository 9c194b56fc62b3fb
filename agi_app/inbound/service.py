"""Inbound calls with a CRM lookup: the FastAGI script ``inbound``, run by
the dialplan context ``[agi-app-inbound]`` for a call from a trunk.

1. The caller's number (``agi_callerid``, when it is a phone number) is
   looked up in the CRM (:class:`~agi_app.inbound.lookup.CRMLookup`); at
   most ``[crm] lookup_timeout`` seconds, and whatever goes wrong the call
   goes on as if nobody were known.
2. Whom to ring: the operator the CRM named when that extension is free
   (its device ``PJSIP/<ext>`` is ``NOT_INUSE`` on the AMI link), else the
   extensions of ``[inbound] group`` together (``Dial(PJSIP/a&PJSIP/b)``,
   built from the configuration only); with no group, the named operator
   whatever their state.  Nobody to ring: ``ERROR``, and the dialplan's
   fallback takes the call.
3. The call is a call of kind ``incoming`` (like a call into an IVR menu),
   created through the one call lifecycle once the lookup is done; its
   parameters keep the lookup (``lookup``, ``name``, ``crm_url``,
   ``operator``), which the webhooks and the widget read back.  Its
   channels carry ``AGI_APP_CALL_ID``; the caller's name from the CRM
   becomes ``CALLERID(name)``, so the operator's phone shows it.
4. History: ``CALL``, ``OPERATOR_CALLTO`` (detail ``extension 1000`` or
   ``group 1000,1001``), ``OPERATOR_PICKUP`` the moment a phone answers
   (the AMI ``DialEnd``), ``CLIENT_PICKUP`` with it (the caller is
   connected: the talk time counts from here), ``FINISH`` (``talk N s with
   extension 1001``) -- or ``OPERATOR_BUSY``, ``OPERATOR_NOANSWER``,
   ``OPERATOR_OFFLINE``, ``CLIENT_CANCEL`` (the caller hung up first),
   ``ERROR``.  The conversation is recorded from ``OPERATOR_CALLTO`` and
   stored once a phone answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agi_app import validation
from agi_app.agi import RESULT_VARIABLE
from agi_app.agi import errors as agi_errors
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import CALL_ID_VAR, Call, Lifecycle
from agi_app.inbound.lookup import CRMLookup, Lookup

__all__ = ["INBOUND_SCRIPT", "InboundService", "Target"]

log = Logger(namespace="agi_app.inbound")

#: the FastAGI script ``[agi-app-inbound]`` runs
INBOUND_SCRIPT = "inbound"
#: the device state of a free extension
FREE = "NOT_INUSE"



@dataclass(frozen=True)
class Target:
    """Whom an inbound call rings: ``what`` in words (``extension 1000``,
    ``group 1000,1001``), the dial string, and the operator's extension
    when it is one."""

    what: str
    dial: str
    sip: str | None = None


class InboundService:
    """Runs the FastAGI script ``inbound`` (see the module docstring).

    :param lifecycle: the application's :class:`~agi_app.calls.lifecycle.Lifecycle`
        (its AMI link tells whether an operator is free)
    :param dialing: the ``[dialing]`` section (dial strings, ring time)
    :param lookup: the :class:`~agi_app.inbound.lookup.CRMLookup`
    :param group: ``[inbound] group``, checked extensions
    """

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        dialing: Any,
        lookup: CRMLookup,
        group: tuple[str, ...] = (),
    ):
        self.lifecycle = lifecycle
        self.dialing = dialing
        self.lookup = lookup
        self.group = tuple(dict.fromkeys(group))

    def register_scripts(self, registry: Any) -> None:
        """Register the FastAGI script ``inbound``."""
        registry.register(INBOUND_SCRIPT, self.inbound)

    # -- whom to ring -----------------------------------------------------------------

    def is_free(self, extension: str) -> bool:
        """Whether the extension's phone is registered and in no call."""
        return self.lifecycle.ami.device_states.get(f"PJSIP/{extension}") == FREE

    def route(self, operator: str | None) -> Target | None:
        """Whom to ring for a caller the CRM gave ``operator`` (a checked
        extension, or None); None: nobody."""
        if operator and self.is_free(operator):
            return self._extension(operator)
        if len(self.group) == 1:
            return self._extension(self.group[0])
        if self.group:
            dial = "&".join(self.dialing.operator_channel.format(sip=m) for m in self.group)
            return Target(f"group {','.join(self.group)}", dial)
        if operator:
            return self._extension(operator)
        return None

    def _extension(self, extension: str) -> Target:
        return Target(
            f"extension {extension}", self.dialing.operator_channel.format(sip=extension), extension
        )

    # -- the FastAGI script -------------------------------------------------------------

    async def inbound(self, agi: Any) -> None:
        """FastAGI ``inbound``: a call from a trunk to the number ``agi.args[0]``."""
        lifecycle = self.lifecycle
        caller = _phone(agi.env.get("agi_callerid"))
        found: Lookup = await self.lookup.lookup(caller)
        who = found.caller
        target = self.route(who.operator)
        params = {
            "caller": caller,
            "did": _did(agi.args[0] if agi.args else None),
            "lookup": found.outcome,
            "name": who.name,
            "crm_url": who.url,
            "operator": who.operator,
        }
        call, _created = await lifecycle.create(
            st.INCOMING, params, sip=target.sip if target else None, phone=caller
        )
        async with lifecycle.session(call):
            try:
                await self._run(agi, call, who.name, target)
            except agi_errors.AGIHangup:
                # the FastAGI connection is gone (a hangup alone does not
                # raise: Dial returns and DIALSTATUS says CANCEL)
                await lifecycle.session_lost(call, "the FastAGI session ended")
                raise

    async def _run(self, agi: Any, call: Call, name: str | None, target: Target | None) -> None:
        lifecycle = self.lifecycle
        # The channels of the call (and the operators' it rings) carry its id.
        await agi.set_variable(f"__{CALL_ID_VAR}", call.call_id)
        if name:
            # Checked display text; SET VARIABLE does not expand ${...}.
            await agi.set_variable("CALLERID(name)", name)
        if agi.hungup:
            await lifecycle.log(call, st.CLIENT_CANCEL, "the caller hung up before anyone was rung")
            return
        if target is None:
            await lifecycle.log(call, st.ERROR, "nobody to ring: the CRM named no operator "
                                                "and [inbound] group is empty")  # fmt: skip
            # the dialplan's fallback (AGI_APP_INBOUND_FALLBACK) takes the call
            await agi.set_variable(RESULT_VARIABLE, "ERROR")
            agi.close()
            return
        await self._connect(agi, call, target)

    async def _connect(self, agi: Any, call: Call, target: Target) -> None:
        lifecycle = self.lifecycle
        call.recording = await lifecycle.recorder.start(agi, call.call_id, None)
        # The caller is connected the moment a phone answers (the AMI
        # DialEnd logs OPERATOR_PICKUP then): the talk time counts from there.
        answered = lifecycle.wait_for(call, {st.OPERATOR_PICKUP})
        answered.addCallback(lambda status: self._connected(call, target) if status else None)
        await lifecycle.log(call, st.OPERATOR_CALLTO, target.what)
        await agi.exec_("Dial", target.dial, self.dialing.call_time_to_ext, "g", timeout=None)
        ended_at = lifecycle.clock.seconds()
        dialstatus = ((await agi.get_variable("DIALSTATUS")) or "").upper()
        if dialstatus == "ANSWER":
            # The DialEnd may have been missed (the AMI link was down).
            await lifecycle.log(call, st.OPERATOR_PICKUP)
            await self._connected(call, target)
            peer = _extension_of(await agi.get_variable("DIALEDPEERNAME")) or target.sip
            talk = call.talk_seconds(ended_at)
            detail = None
            if talk is not None and peer:
                detail = f"talk {talk:.0f} s with extension {peer}"
            await lifecycle.finish(call, detail, ended_at=ended_at)
            return
        status, detail = st.connection_status_for_dialstatus(dialstatus)
        await lifecycle.log(call, status, f"{target.what}: {detail}")

    def _connected(self, call: Call, target: Target) -> defer.Deferred:
        if not call.reached(st.OPERATOR_PICKUP):
            return defer.succeed(None)
        d = defer.ensureDeferred(self.lifecycle.log(
            call, st.CLIENT_PICKUP, f"connected to {target.what}",
            at=call.logged_at.get(st.OPERATOR_PICKUP),
        ))  # fmt: skip
        d.addErrback(lambda f: log.failure("{call_id}: pickup", f, call_id=call.call_id))
        return d


def _phone(value: str | None) -> str | None:
    try:
        return validation.phone(value, "caller")
    except validation.InvalidInput:
        return None  # anonymous, or a name where the number should be


def _did(value: str | None) -> str | None:
    """The number the call came in on, as ``[agi-app-inbound]`` hands it
    over (``unknown`` when the trunk sent none)."""
    if not value or value == "unknown":
        return None
    rule = validation.PHONE if value.startswith("+") else validation.EXTENSION
    return value if rule.match(value) else None


def _extension_of(channel: str | None) -> str | None:
    """``1001`` of ``PJSIP/1001-0000000a``; None if it is no such channel."""
    if not channel or "/" not in channel:
        return None
    resource = channel.split("/", 1)[1].rsplit("-", 1)[0]
    return resource if validation.EXTENSION.match(resource) else None
