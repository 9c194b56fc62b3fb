"""The IVR service: menus from the admin's file, run on FastAGI, every
choice in the call's history.

* :meth:`IVRService.run` runs a menu for a call that already has a history
  (:class:`~agi_app.calls.outbound.CallLog`): callWithInteractiveVoiceResponse
  uses it from its ``ivr_call`` script.
* The FastAGI script ``ivr_incoming`` (dialplan context ``[agi-app-ivr]``)
  runs a menu for a call that came in from a trunk: it creates the call in
  the store (kind ``incoming``: ``CALL``, then ``CLIENT_PICKUP`` when the
  menu answers), marks the channel with ``AGI_APP_CALL_ID`` and runs the menu.

Statuses of a menu: one ``IVR_CHOICE`` per choice, timeout or invalid digit
(detail ``menu=main digit=1 -> menu sales``).  Connecting the caller to an
extension or a number logs ``OPERATOR_CALLTO``, then ``OPERATOR_PICKUP``
when that phone answers (from the AMI ``DialEnd``, the moment it happens),
then ``FINISH`` when the conversation ends -- or the failing status
(``OPERATOR_BUSY``, ``OPERATOR_NOANSWER``, ``OPERATOR_OFFLINE``,
``CLIENT_CANCEL`` if the caller hung up first, ``ERROR``).  A call that
ends in the menus ends with ``FINISH``.

The menu file is read at start and again whenever it changes on disk
(checked at the start of every menu); a file with an error (or no file)
keeps the previous menus in use (none at start) and logs the error naming
section and key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agi_app import validation
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import REQUIRES, new_call_id
from agi_app.calls.outbound import (
    CALL_ID_VAR,
    IVR_CHOICE,
    CallLog,
    CallSessions,
    Tracked,
)
from agi_app.calls.recording import Recorder, Recording
from agi_app.calls.service import call_is_live
from agi_app.ivr.engine import Connect, MenuRunner
from agi_app.ivr.menus import MENU_NAME, MenuError, Menus, load_menus

__all__ = ["IVRService", "UnknownMenu"]

log = Logger(namespace="agi_app.ivr")

INCOMING_KIND = "incoming"
#: DIALSTATUS of a connection -> (status, detail)
_DIAL_OUTCOME = {
    "BUSY": (st.OPERATOR_BUSY, "busy"),
    "NOANSWER": (st.OPERATOR_NOANSWER, "no answer"),
    "CHANUNAVAIL": (st.OPERATOR_OFFLINE, "unreachable"),
    "CONGESTION": (st.ERROR, "congestion"),
    "CANCEL": (st.CLIENT_CANCEL, "the caller hung up while it rang"),
}


class UnknownMenu(LookupError):
    """A script was asked for a menu the configuration does not define."""


class IVRService:
    """Runs IVR menus on FastAGI sessions.

    :param store: the call log
    :param ami: the PBX link (DialEnd events, channels for reconcile)
    :param dialing: the ``[dialing]`` section (dial strings, ring times)
    :param clock: an ``IReactorTime``
    :param path: the menu file (None: menus must be given)
    :param menus: menus to use instead of a file (tests)
    """

    def __init__(
        self,
        *,
        store: Any,
        ami: Any,
        dialing: Any,
        clock: Any,
        path: str | os.PathLike | None = None,
        menus: Menus | None = None,
        pbx: str = "default",
        new_id: Callable[[], str] | None = None,
        grace: float = 3.0,
    ):
        self.store = store
        self.ami = ami
        self.dialing = dialing
        self.clock = clock
        self.path = Path(path) if path is not None else None
        self.pbx = pbx
        self._menus = menus if menus is not None else Menus({}, None)
        self._stamp: tuple[float, int] | None = None
        self._new_id = new_id or new_call_id
        #: call id -> the history of a call whose caller is being connected,
        #: and the recording of that conversation
        self._connecting: dict[str, tuple[CallLog, Recording | None]] = {}
        self.recorder = Recorder(
            store=store, dialing=dialing, clock=clock, live=lambda c: call_is_live(ami, c)
        )
        self.sessions = CallSessions(
            store=store, ami=ami, clock=clock, kinds={INCOMING_KIND}, settle=self._settle,
            pbx=pbx, grace=grace, requires=REQUIRES[st.INCOMING],
        )  # fmt: skip
        self._unsubscribe: list[Callable[[], None]] = []
        # A missing or broken file is logged, not fatal: the rest of agi_app
        # runs, and the menus appear as soon as the file is fixed.
        if self.path is not None and self._file_stamp() is None:
            log.warn("IVR: no menu file {path}; no IVR menus until it exists", path=self.path)
        self._maybe_reload()

    # -- menus ------------------------------------------------------------------

    @property
    def menus(self) -> Menus:
        """The menus in use (re-read first if the file changed)."""
        self._maybe_reload()
        return self._menus

    def reload(self) -> Menus:
        """Read the menu file now; raises :class:`MenuError` (the old menus stay)."""
        assert self.path is not None
        stamp = self._file_stamp()
        menus = load_menus(self.path)
        self._menus, self._stamp = menus, stamp
        log.info("IVR: {count} menus from {path}: {names}", count=len(menus), path=self.path,
                 names=", ".join(sorted(menus)))
        return menus

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            info = self.path.stat()  # type: ignore[union-attr]
        except OSError:
            return None
        return info.st_mtime, info.st_size

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self.reload()
        except MenuError as e:
            # Keep serving the last good menus; do not retry until the file changes.
            self._stamp = stamp
            log.error("IVR: {error}; the menus in use stay ({names})", error=str(e),
                      names=", ".join(sorted(self._menus)) or "none")

    def check_menu(self, value: object, field: str = "ivrName") -> str:
        """A menu name that exists (:class:`~agi_app.validation.InvalidInput` otherwise)."""
        if value is None or value == "":
            raise validation.InvalidInput(field, f"{field} is required", code=f"missing_{field}")
        if not isinstance(value, str) or not MENU_NAME.fullmatch(value):
            raise validation.InvalidInput(field, f"{field} must be 1 to 32 of A-Z a-z 0-9 _ -")
        if value not in self.menus:
            raise validation.InvalidInput(
                field, f"no IVR menu {value!r} is configured", code=f"unknown_{field}"
            )
        return value

    # -- wiring -------------------------------------------------------------------

    def start(self) -> None:
        """Follow DialEnd (the moment a connection is answered) and the calls' channels."""
        self._unsubscribe.append(self.ami.subscribe(self._on_dial_end, "DialEnd"))
        self.sessions.start()

    def stop(self) -> None:
        """Drop the AMI subscriptions and pending recording checks."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self.sessions.stop()
        self.recorder.stop()

    def register_scripts(self, registry: Any) -> None:
        """Register the FastAGI script ``ivr_incoming``."""
        registry.register("ivr_incoming", self.incoming)

    # -- running a menu -----------------------------------------------------------

    async def run(self, agi: Any, call_log: CallLog, menu: str, caller: str | None = None
                  ) -> None:  # fmt: skip
        """Run ``menu`` for the caller on ``agi``; every choice goes to
        ``call_log`` as ``IVR_CHOICE``; a chosen connection is dialled,
        showing ``caller`` (a checked number) as the caller's number."""
        menus = self.menus
        if menu not in menus:
            raise UnknownMenu(f"no IVR menu {menu!r}")

        async def on_choice(text: str) -> None:
            await call_log.add(IVR_CHOICE, text)

        runner = MenuRunner(agi, menus, on_choice)
        target = await runner.run(menu)
        if target is not None:
            if caller:
                # A client agi_app called has no caller ID of its own yet.
                await agi.set_variable("CALLERID(num)", caller)
            await self._connect(agi, call_log, target, menus[target.menu].goodbye_prompt)

    async def _connect(self, agi: Any, call_log: CallLog, target: Connect,
                       goodbye: str | None) -> None:  # fmt: skip
        if target.kind == "extension":
            dial = self.dialing.operator_channel.format(sip=target.target)
            ring = self.dialing.call_time_to_ext
        else:
            dial = self.dialing.client_channel.format(
                phone=target.target, trunk=self.dialing.default_trunk
            )
            ring = self.dialing.call_time_to_client
        call = await self.store.get_call(call_log.call_id)
        recording = await self.recorder.start(
            agi, call_log.call_id, call["order_id"] if call else None
        )
        await call_log.add(st.OPERATOR_CALLTO, f"{target.kind} {target.target}")
        self._connecting[call_log.call_id] = (call_log, recording)
        try:
            await agi.exec_("Dial", dial, ring, "g", timeout=None)
            dialstatus = ((await agi.get_variable("DIALSTATUS")) or "").upper()
            if dialstatus == "ANSWER":
                await self._picked_up(call_log, recording)
                answered = await agi.get_variable("ANSWEREDTIME")
                await call_log.add(st.FINISH, f"talk with {target.kind} {target.target}",
                                   talk_seconds=_seconds(answered))  # fmt: skip
                return
        finally:
            self._connecting.pop(call_log.call_id, None)
            self.recorder.finish(recording)
        status, detail = _DIAL_OUTCOME.get(dialstatus, (st.ERROR, f"dial status {dialstatus}"))
        await call_log.add(status, f"{target.kind} {target.target}: {detail}")
        if not agi.hungup and goodbye:
            from agi_app.sounds import playback_name

            await agi.stream_file(playback_name(goodbye), "", timeout=60)

    def _on_dial_end(self, event: Any) -> None:
        if (event.get("DialStatus") or "").upper() != "ANSWER":
            return
        call_id = (getattr(event, "variables", {}) or {}).get(CALL_ID_VAR)
        connecting = self._connecting.get(call_id) if call_id else None
        if connecting is not None:
            d = defer.ensureDeferred(self._picked_up(*connecting))
            d.addErrback(lambda f: log.failure("OPERATOR_PICKUP", f))

    async def _picked_up(self, call_log: CallLog, recording: Recording | None) -> None:
        """The extension or number answered: the conversation is recorded."""
        if await call_log.add(st.OPERATOR_PICKUP) is not None:
            await self.recorder.store_it(recording)

    # -- incoming calls -------------------------------------------------------------

    async def incoming(self, agi: Any) -> None:
        """FastAGI ``ivr_incoming``: a call from a trunk reached menu ``agi.args[0]``."""
        menu = agi.args[0] if agi.args else ""
        if not isinstance(menu, str) or menu not in self.menus:
            raise UnknownMenu(f"no IVR menu {menu!r}")
        caller = agi.env.get("agi_callerid") or ""
        try:
            phone = validation.phone(caller, "caller")
        except validation.InvalidInput:
            phone = None
        did = agi.env.get("agi_dnid") or ""
        params = {"ivrName": menu, "caller": phone, "did": did if did != "unknown" else None}
        call, _created = await self.store.create_call(
            call_id=self._new_id(), kind=INCOMING_KIND, sip=None, phone=phone, order_id=None,
            external_key=None, params=params, pbx=self.pbx,
        )  # fmt: skip
        call_id = call["call_id"]
        tracked = self.sessions.add(call_id, INCOMING_KIND, params, [st.CALL])
        tracked.agi_sessions += 1
        try:
            # The channels of the call (and whoever it is connected to) carry its id.
            await agi.set_variable(f"__{CALL_ID_VAR}", call_id)
            await tracked.log.add(st.CLIENT_PICKUP, f"menu {menu}")
            tracked.pickup_time = self.clock.seconds()
            await self.sessions.finish_after(
                tracked,
                lambda: self.run(agi, tracked.log, menu),
                hung_up="the caller hung up",
                ended="the IVR ended the call",
                finish=self._finish,
            )
        finally:
            tracked.agi_sessions -= 1

    async def _finish(self, tracked: Tracked, why: str) -> None:
        talk = tracked.talk_seconds(self.clock.seconds())
        await tracked.log.add(st.FINISH, why, talk_seconds=talk)

    async def _settle(self, tracked: Tracked, why: str) -> None:
        if tracked.log.reached(st.CLIENT_PICKUP):
            await tracked.log.add(st.FINISH, why)
        else:
            await tracked.log.add(st.ERROR, why)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
