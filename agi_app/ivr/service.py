"""The IVR service: menus from the admin's file, run on FastAGI, every
choice in the call's history.

* :meth:`IVRService.run` runs a menu for a call of the call lifecycle
  (:class:`~agi_app.calls.lifecycle.Call`): callWithInteractiveVoiceResponse
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
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from agi_app import validation
from agi_app.agi import errors as agi_errors
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import CALL_ID_VAR, Call, Lifecycle
from agi_app.errors import NotFound
from agi_app.ivr.engine import Connect, MenuRunner
from agi_app.ivr.menus import MENU_NAME, MenuError, Menus, load_menus
from agi_app.sounds import playback_name

__all__ = ["IVRService", "UnknownMenu"]

log = Logger(namespace="agi_app.ivr")



class UnknownMenu(NotFound):
    """A script was asked for a menu the configuration does not define."""

    code = "unknown_ivrName"


class IVRService:
    """Runs IVR menus on FastAGI sessions.

    :param lifecycle: the application's :class:`~agi_app.calls.lifecycle.Lifecycle`
        (None: menus only, no calls -- e.g. to check a menu file)
    :param dialing: the ``[dialing]`` section (dial strings, ring times)
    :param path: the menu file (None: menus must be given)
    :param menus: menus to use instead of a file (tests)
    """

    def __init__(
        self,
        *,
        lifecycle: Lifecycle | None,
        dialing: Any,
        path: str | os.PathLike | None = None,
        menus: Menus | None = None,
    ):
        self.lifecycle = lifecycle
        self.dialing = dialing
        self.path = Path(path) if path is not None else None
        self._menus = menus if menus is not None else Menus({}, None)
        self._stamp: tuple[float, int] | None = None
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

    def register_scripts(self, registry: Any) -> None:
        """Register the FastAGI script ``ivr_incoming``."""
        registry.register("ivr_incoming", self.incoming)

    # -- running a menu -----------------------------------------------------------

    async def run(self, agi: Any, call: Call, menu: str, caller: str | None = None) -> None:
        """Run ``menu`` for the caller on ``agi``; every choice goes to the
        call's history as ``IVR_CHOICE``; a chosen connection is dialled,
        showing ``caller`` (a checked number) as the caller's number."""
        assert self.lifecycle is not None
        lifecycle = self.lifecycle
        menus = self.menus
        if menu not in menus:
            raise UnknownMenu(f"no IVR menu {menu!r}")

        async def on_choice(text: str) -> None:
            await lifecycle.log(call, st.IVR_CHOICE, text)

        runner = MenuRunner(agi, menus, on_choice)
        target = await runner.run(menu)
        if target is not None:
            if caller:
                # A client agi_app called has no caller ID of its own yet.
                await agi.set_variable("CALLERID(num)", caller)
            await self._connect(agi, call, target, menus[target.menu].goodbye_prompt)

    async def _connect(self, agi: Any, call: Call, target: Connect,
                       goodbye: str | None) -> None:  # fmt: skip
        assert self.lifecycle is not None
        lifecycle = self.lifecycle
        if target.kind == "extension":
            dial = self.dialing.operator_channel.format(sip=target.target)
            ring = self.dialing.call_time_to_ext
        else:
            dial = self.dialing.client_channel.format(
                phone=target.target, trunk=self.dialing.default_trunk
            )
            ring = self.dialing.call_time_to_client
        row = await lifecycle.store.get_call(call.call_id)
        call.recording = await lifecycle.recorder.start(
            agi, call.call_id, row["order_id"] if row else None
        )
        # OPERATOR_PICKUP comes from the AMI DialEnd the moment the phone
        # answers (the lifecycle's), or from DIALSTATUS below.
        await lifecycle.log(call, st.OPERATOR_CALLTO, f"{target.kind} {target.target}")
        await agi.exec_("Dial", dial, ring, "g", timeout=None)
        ended_at = lifecycle.clock.seconds()
        dialstatus = ((await agi.get_variable("DIALSTATUS")) or "").upper()
        if dialstatus == "ANSWER":
            await lifecycle.log(call, st.OPERATOR_PICKUP)
            await lifecycle.finish(call, f"talk with {target.kind} {target.target}",
                                   ended_at=ended_at)  # fmt: skip
            return
        status, detail = st.connection_status_for_dialstatus(dialstatus)
        await lifecycle.log(call, status, f"{target.kind} {target.target}: {detail}")
        if not agi.hungup and goodbye:
            await agi.stream_file(playback_name(goodbye), "", timeout=60)

    # -- incoming calls -------------------------------------------------------------

    async def incoming(self, agi: Any) -> None:
        """FastAGI ``ivr_incoming``: a call from a trunk reached menu ``agi.args[0]``."""
        assert self.lifecycle is not None
        lifecycle = self.lifecycle
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
        call, _created = await lifecycle.create(st.INCOMING, params, sip=None, phone=phone)
        async with lifecycle.session(call):
            # The channels of the call (and whoever it is connected to) carry its id.
            await agi.set_variable(f"__{CALL_ID_VAR}", call.call_id)
            await lifecycle.log(call, st.CLIENT_PICKUP, f"menu {menu}")
            try:
                await self.run(agi, call, menu)
            except agi_errors.AGIHangup:
                await lifecycle.session_lost(call, "the caller hung up")
                raise
            await lifecycle.finish(call, "the IVR ended the call",
                                   ended_at=lifecycle.clock.seconds())  # fmt: skip
