"""Several PBXs: the parts each PBX has of its own, and what picks the PBX
of a request, a call or a FastAGI session.

Every PBX (``[ami]``, named ``default``, and one per ``[ami:NAME]``) is one
:class:`PBX`: its AMI link, its call lifecycle (which reconciles after that
link's own logins), the services that place and answer calls through it,
its live call tracker, call control and operator states.  Nothing in one
PBX's parts knows of another PBX.  The store, the FastAGI listener, the HTTP
API, webhooks and the CRM lookup are shared.

:class:`PBXDirectory` is the one place that decides which PBX something
belongs to (docs/scaling.md, "Several PBXs"):

* **an extension** (makeCall, extToPhone, the widget, callbacks without
  ``pbx``): the PBX where its phone is registered now; else the PBX whose
  ``extensions`` key names it; else the PBX that last saw it registered
  (remembered across that PBX's outages, so a PBX that is down answers 503
  for its own extensions rather than sending them elsewhere); else a PBX
  that knows the endpoint at all; else ``default``.  Several PBXs with the
  extension registered: the first in the file.
* **a call** (call control, FastAGI scripts of calls agi_app placed): the
  PBX whose tracker or lifecycle follows it, else the ``pbx`` the store
  keeps with it.
* **a FastAGI session**: every PBX's dialplan calls the one FastAGI server.
  With one PBX nothing is checked (as before).  With several, the session's
  own channel (``agi_uniqueid`` with ``agi_channel``, which Asterisk writes
  and no dialplan can set) must be a live channel of exactly one PBX's AMI
  channel list -- and of the call's PBX, for a script tied to a call.  A
  dialplan cannot claim another PBX's call or IVR: it would need a channel
  that other PBX reports.  A session matching no PBX (or several) is
  refused (``AGI_APP_RESULT=ERROR``; the dialplan's fallback runs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from agi_app import validation
from agi_app.agi import ScriptRegistry
from agi_app.ami.service import AMIService
from agi_app.calls import statuses
from agi_app.calls.lifecycle import Lifecycle
from agi_app.calls.outbound import OutboundCalls
from agi_app.calls.service import CallRequest, CallService
from agi_app.config import DEFAULT_PBX, AMIConfig
from agi_app.errors import AppError, InvalidInput
from agi_app.inbound import InboundService
from agi_app.ivr.service import IVRService
from agi_app.live.control import CallControl, CallNotFound
from agi_app.live.operators import OperatorTracker
from agi_app.live.tracker import CallTracker

__all__ = [
    "CALL_SCRIPTS",
    "AllTrackers",
    "PBX",
    "PBXCalls",
    "PBXControl",
    "PBXDirectory",
    "UnknownSession",
    "route_scripts",
]

log = Logger(namespace="agi_app.pbxs")

#: FastAGI scripts of a call agi_app placed: their first argument is the call id
CALL_SCRIPTS = frozenset({"operator_call", "announcement", "ivr_call"})
#: device states of a phone that is registered (the endpoint is reachable)
_NOT_REGISTERED = frozenset({"UNAVAILABLE", "INVALID", "UNKNOWN"})
#: seconds a FastAGI session waits for its channel to show on a PBX's AMI
#: link (the Newchannel event may come a moment after the session)
SESSION_WAIT = 2.0


class UnknownSession(AppError):
    """A FastAGI session whose channel is not one PBX's."""

    status = 403
    code = "unknown_session"


def pbx_dialing(dialing: Any, ami: AMIConfig) -> Any:
    """``[dialing]`` for one PBX: its recordings folders where its section
    names them."""
    changes = {}
    if ami.recordings_dir:
        changes["recordings_dir"] = ami.recordings_dir
    if ami.pbx_recordings_dir or ami.recordings_dir:
        changes["pbx_recordings_dir"] = ami.pbx_recordings_dir
    return dataclasses.replace(dialing, **changes) if changes else dialing


class PBX:
    """Every part that belongs to one PBX, built from its ``[ami]`` or
    ``[ami:NAME]`` section and the shared configuration.

    :param name: ``default`` or the NAME of ``[ami:NAME]``
    :param ami_config: its section
    :param config: the whole configuration
    :param store: the shared store
    :param reactor: the reactor
    :param lookup: the CRM lookup of inbound calls (shared)
    :param on_transfer: ``(lifecycle, call_id, from, to)`` when call control
        handed a call over
    """

    def __init__(
        self,
        name: str,
        ami_config: AMIConfig,
        config: Any,
        *,
        store: Any,
        reactor: Any,
        lookup: Any,
        on_transfer: Callable[..., Any],
    ):
        self.name = name
        self.config = ami_config
        self.dialing = dialing = pbx_dialing(config.dialing, ami_config)
        self.ami = AMIService(
            ami_config.host, ami_config.port, ami_config.username, ami_config.secret,
            reactor=reactor, ping_interval=ami_config.ping_interval,
            action_timeout=ami_config.action_timeout, max_backoff=ami_config.max_backoff,
            name=name,
        )  # fmt: skip
        # Every call of every kind on this PBX follows one lifecycle to its
        # one final status; it reconciles after each login of this link.
        self.lifecycle = Lifecycle(
            store=store, ami=self.ami, dialing=dialing, clock=reactor, pbx=name
        )
        self.calls = CallService(
            lifecycle=self.lifecycle, dialing=dialing,
            auto_answer_headers=dialing.auto_answer(ami_config.host),
        )  # fmt: skip
        # Trunks are endpoints too, but not operators.
        self.operators = OperatorTracker(
            self.ami, store, reactor, exclude=dialing.all_trunks, pbx=name
        )
        self.tracker = CallTracker.for_dialing(self.ami, dialing, reactor)
        lifecycle = self.lifecycle
        self.control = CallControl(
            ami=self.ami, tracker=self.tracker, dialing=dialing, clock=reactor, store=store,
            on_transfer=lambda call_id, a, b: on_transfer(lifecycle, call_id, a, b),
            leg_recording=lifecycle.leg_recording, on_leg_recorded=lifecycle.leg_recorded,
        )  # fmt: skip
        self.ivr = IVRService(lifecycle=lifecycle, dialing=dialing, path=config.ivr.path)
        self.outbound = OutboundCalls(lifecycle=lifecycle, dialing=dialing, menus=self.ivr)
        self.inbound = InboundService(
            lifecycle=lifecycle, dialing=dialing, lookup=lookup, group=config.inbound.group
        )
        #: this PBX's FastAGI scripts (:func:`route_scripts` serves them)
        self.scripts = ScriptRegistry()
        for part in (self.calls, self.ivr, self.outbound, self.inbound):
            part.register_scripts(self.scripts)

    def start(self) -> None:
        """Follow the PBX, then connect to it."""
        self.lifecycle.start()
        self.operators.start()
        self.tracker.start()
        self.ami.startService()

    async def stop(self) -> None:
        """Stop following and drop the link."""
        self.lifecycle.stop()
        self.operators.stop()
        self.tracker.stop()
        await defer.maybeDeferred(self.ami.stopService)

    def registered(self, extension: str) -> bool:
        """The extension's phone is registered on this PBX now."""
        state = self.ami.device_states.get(f"{self.tracker.extension_tech}/{extension}")
        return state is not None and state not in _NOT_REGISTERED

    def knows(self, extension: str) -> bool:
        """This PBX reported the extension's device at all (registered or not)."""
        state = self.ami.device_states.get(f"{self.tracker.extension_tech}/{extension}")
        return state is not None and state != "INVALID"

    def has_channel(self, uniqueid: str, channel: str) -> bool:
        """A live channel of this PBX has this Uniqueid and name."""
        found = self.ami.channels.get(uniqueid)
        return found is not None and found.get("Channel") == channel


class PBXDirectory:
    """Every PBX by name, and which one an extension, a call or a FastAGI
    session belongs to (see the module's docstring).

    :param pbxs: the PBXs, ``default`` first
    :param store: the store (the ``pbx`` of a call no PBX follows now)
    :param clock: an ``IReactorTime`` (the wait of a session for its channel)
    """

    def __init__(self, pbxs: Iterable[PBX], *, store: Any, clock: Any):
        self.pbxs: dict[str, PBX] = {p.name: p for p in pbxs}
        self.store = store
        self.clock = clock
        #: extension -> the PBX that last reported it registered
        self._last_seen: dict[str, str] = {}

    def __iter__(self):
        return iter(self.pbxs.values())

    def __len__(self) -> int:
        return len(self.pbxs)

    @property
    def default(self) -> PBX:
        """The PBX of ``[ami]``."""
        return self.pbxs[DEFAULT_PBX]

    def get(self, name: str | None, field: str = "pbx") -> PBX:
        """The PBX named ``name`` (checked; 400 ``unknown_pbx`` if there is none)."""
        if name is None:
            return self.default
        name = validation.pbx_name(name, field)
        found = self.pbxs.get(name)
        if found is None:
            raise InvalidInput(
                field, f"{field} {name!r} is not a configured PBX ({', '.join(self.pbxs)})",
                code="unknown_pbx",
            )  # fmt: skip
        return found

    def of_extension(self, extension: str) -> PBX:
        """The PBX a call to ``extension`` goes to when the request names none."""
        registered = [p for p in self if p.registered(extension)]
        if registered:
            self._last_seen[extension] = registered[0].name
            return registered[0]
        configured = next((p for p in self if p.config.has_extension(extension)), None)
        if configured is not None:
            return configured
        last = self._last_seen.get(extension)
        if last is not None:
            return self.pbxs[last]
        return next((p for p in self if p.knows(extension)), self.default)

    def of_live_call(self, call_id: str) -> PBX | None:
        """The PBX whose tracker or lifecycle follows call ``call_id`` now."""
        for pbx in self:
            if pbx.tracker.call(call_id) is not None or pbx.lifecycle.get(call_id) is not None:
                return pbx
        return None

    async def of_call(self, call_id: str) -> PBX | None:
        """The PBX of call ``call_id``: the one following it, else the
        ``pbx`` the store keeps with it (None: no such call, or a PBX no
        longer configured)."""
        live = self.of_live_call(call_id)
        if live is not None:
            return live
        row = await self.store.get_call(call_id)
        return self.pbxs.get(row["pbx"]) if row is not None else None

    async def of_session(self, agi: Any, script: str) -> PBX:
        """The PBX a FastAGI session comes from (see the module's
        docstring); raises :class:`UnknownSession`."""
        if len(self.pbxs) == 1:
            return self.default
        candidates = list(self)
        if script in CALL_SCRIPTS and agi.args:
            try:
                call_id = validation.identifier(agi.args[0], "call_id")
            except InvalidInput:
                call_id = None
            owner = await self.of_call(call_id) if call_id else None
            if owner is not None:
                candidates = [owner]
        uniqueid, channel = agi.env.get("agi_uniqueid", ""), agi.env.get("agi_channel", "")
        found = await self._channel_owner(candidates, uniqueid, channel)
        if found is None:
            raise UnknownSession(
                f"FastAGI {script}: channel {channel} ({uniqueid}) is live on no PBX that may "
                "run it"
            )
        return found

    async def _channel_owner(self, candidates: list[PBX], uniqueid: str, channel: str):
        def owner() -> PBX | None | bool:
            having = [p for p in candidates if p.has_channel(uniqueid, channel)]
            if len(having) > 1:
                return False  # one channel on two PBXs: nobody can tell
            return having[0] if having else None

        found = owner()
        if found is not None or not uniqueid:
            return found or None
        # The session may come before the PBX's Newchannel event: wait for it.
        waiting: defer.Deferred = defer.Deferred()
        offs = []

        def check(_event: Any) -> None:
            result = owner()
            if result is not None and not waiting.called:
                waiting.callback(result)

        for pbx in candidates:
            offs.append(pbx.ami.subscribe(check))
        waiting.addTimeout(SESSION_WAIT, self.clock, onTimeoutCancel=lambda *_: None)
        try:
            return (await waiting) or None
        finally:
            for off in offs:
                off()


def route_scripts(directory: PBXDirectory, registry: ScriptRegistry) -> None:
    """Serve every PBX's FastAGI scripts from ``registry`` (the one FastAGI
    listener): each session runs the script of the PBX it comes from.  With
    one PBX its scripts are served as they are."""
    if len(directory) == 1:
        for name in directory.default.scripts.names():
            registry.register(name, directory.default.scripts.get(name))
        return
    names = {name for pbx in directory for name in pbx.scripts.names()}
    for name in sorted(names):
        registry.register(name, _router(directory, name))


def _router(directory: PBXDirectory, name: str) -> Callable[[Any], Any]:
    async def run(agi: Any) -> Any:
        pbx = await directory.of_session(agi, name)
        handler = pbx.scripts.get(name)
        if handler is None:
            raise UnknownSession(f"FastAGI {name}: PBX {pbx.name} has no such script")
        return await handler(agi)

    return run


class PBXCalls:
    """Operator-first calls on the PBX of the extension (or the one asked
    for): what the API, the widget and callbacks place calls through.

    Has the interface of :class:`~agi_app.calls.service.CallService` that
    they use; ``place`` takes an optional ``pbx``.
    """

    def __init__(self, directory: PBXDirectory):
        self.directory = directory
        self.store = directory.store

    def service_for(self, req: CallRequest, pbx: str | None = None) -> CallService:
        """The call service of ``pbx`` (checked), else of the PBX of the
        request's extension; phoneToPhone (no extension) the default's."""
        if pbx is not None:
            return self.directory.get(pbx).calls
        if req.first_is_phone:
            return self.directory.default.calls
        return self.directory.of_extension(req.first).calls

    async def place(self, req: CallRequest, pbx: str | None = None) -> tuple[str, bool]:
        """Place ``req`` (see :meth:`CallService.place`) on its PBX; 503 when
        that PBX's AMI link is down."""
        return await self.service_for(req, pbx).place(req)

    def operator_outcome(self, call_id: str) -> defer.Deferred:
        """See :meth:`CallService.operator_outcome`, on the PBX following the call."""
        pbx = self.directory.of_live_call(call_id)
        if pbx is None:
            return defer.succeed(None)
        return pbx.calls.operator_outcome(call_id)

    def __getattr__(self, name: str) -> Any:
        # the rest (can_auto_answer, dialing...) is configuration shared by
        # every PBX's service: the default's answers
        return getattr(self.directory.default.calls, name)


class PBXControl:
    """Call control on the PBX that has the call; current calls of an
    extension across every PBX that knows it.  Has the interface of
    :class:`~agi_app.live.control.CallControl` that the API and the
    widget use."""

    def __init__(self, directory: PBXDirectory):
        self.directory = directory

    def _knowing(self, extension: object) -> list[PBX]:
        try:
            ext = validation.extension(extension, "extension_id")
        except InvalidInput:
            return []  # the PBX's own call control says what is wrong, in its order
        return [p for p in self.directory if p.ami.connected and p.knows(ext)]

    def _of_extension(self, extension: object) -> PBX:
        try:
            ext = validation.extension(extension, "extension_id")
        except InvalidInput:
            return self.directory.default
        return self.directory.of_extension(ext)

    def check_extension(self, extension: object, field: str = "extension_id") -> str:
        """An extension that exists on a PBX (404 otherwise; 503 when its PBX is down)."""
        knowing = self._knowing(extension)
        if knowing:
            return knowing[0].control.check_extension(extension, field)
        return self._of_extension(extension).control.check_extension(extension, field)

    def current_calls(self, extension: object) -> list[dict[str, Any]]:
        """``call_list`` of an extension on every PBX that knows it, each
        call with the ``pbx`` it is on."""
        knowing = self._knowing(extension) or [self._of_extension(extension)]
        out = []
        for pbx in knowing:
            out.extend({**c, "pbx": pbx.name} for c in pbx.control.current_calls(extension))
        return out

    def _with_call(self, extension: object, call_api_id: object) -> PBX:
        if isinstance(call_api_id, str):
            for pbx in self._knowing(extension):
                if pbx.tracker.call(call_api_id) is not None:
                    return pbx
        return self._of_extension(extension)

    async def act(self, extension: object, call_api_id: object, action: object,
                  send_dst: object = None) -> dict[str, Any]:  # fmt: skip
        """:meth:`CallControl.act` on the PBX that has the call."""
        pbx = self._with_call(extension, call_api_id)
        return await pbx.control.act(extension, call_api_id, action, send_dst)

    async def hangup(self, extension: object, call_api_id: object) -> None:
        """:meth:`CallControl.hangup` on the PBX that has the call."""
        await self._with_call(extension, call_api_id).control.hangup(extension, call_api_id)

    async def _of_call(self, call_id: object) -> PBX:
        try:
            cid = validation.identifier(call_id, "generalCallID")
        except InvalidInput:
            return self.directory.default  # (which answers the 400)
        pbx = await self.directory.of_call(cid)
        if pbx is None:
            raise CallNotFound(f"no call {cid}", field="generalCallID")
        return pbx

    async def hangup_call(self, call_id: object) -> None:
        """:meth:`CallControl.hangup_call` on the PBX of the call."""
        await (await self._of_call(call_id)).control.hangup_call(call_id)

    async def transfer_call(self, call_id: object, phone_number: object) -> dict[str, Any]:
        """:meth:`CallControl.transfer_call` on the PBX of the call."""
        return await (await self._of_call(call_id)).control.transfer_call(call_id, phone_number)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.directory.default.control, name)


class AllTrackers:
    """The live calls of every PBX as one tracker: what the widget follows
    (its events from every PBX; a call looked up on each)."""

    def __init__(self, directory: PBXDirectory):
        self.directory = directory

    def subscribe(self, callback: Callable[[Any], object]) -> Callable[[], None]:
        """Follow every PBX's tracker; returns the function that stops it."""
        offs = [pbx.tracker.subscribe(callback) for pbx in self.directory]

        def off() -> None:
            for each in offs:
                each()

        return off

    def call(self, call_api_id: str) -> Any:
        """The live call ``call_api_id`` on the first PBX that has it, or None."""
        for pbx in self.directory:
            found = pbx.tracker.call(call_api_id)
            if found is not None:
                return found
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.directory.default.tracker, name)


def transferred(lifecycle: Lifecycle, call_id: str, from_party: str, to: str) -> Any:
    """A call control hand-over: the call's ``TRANSFER`` entry."""
    return lifecycle.note(call_id, statuses.TRANSFER, f"{from_party} → {to}")


def pbx_health(directory: PBXDirectory) -> Mapping[str, dict[str, Any]]:
    """Each PBX's link for ``GET /health``."""
    return {
        p.name: {"connected": bool(p.ami.connected), "host": p.config.host,
                 "port": p.config.port, "channels": len(p.ami.channels)}
        for p in directory
    }  # fmt: skip

