"""Click-to-call endpoints (CONTRACT 3.1 and 4) and ``GET /health``.

- ``/api/makeCall.{json,xml}`` — the CRM's operator-first call;
- ``POST /api/calls/extToPhone`` and ``/api/calls/phoneToPhone`` — the same
  flow with the call model's parameter names.

Each route's parameters are declared once (:mod:`agi_app.web.params`); the
handlers get them checked, build a
:class:`~agi_app.calls.service.CallRequest` and hand it to the
:class:`~agi_app.calls.service.CallService`; nothing unchecked reaches it.
A trunk named by a request must be ``[dialing] default_trunk`` or one of
``[dialing] trunks`` (400 ``unknown_trunk``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer

from agi_app import validation as v
from agi_app.calls import statuses as st
from agi_app.calls.service import CallRequest, CallService
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, ApiResponse, Router
from agi_app.web.openapi import paths
from agi_app.web.params import EXTERNAL_KEY, ORDER_ID, TRUNK_NUMBER, Answer, Operation

__all__ = ["OPERATIONS", "CallEndpoints"]

#: longest limit_call_time accepted, seconds (a day)
MAX_TALK = 86400
#: extra seconds extToPhone (async=false) waits beyond the ring time
OUTCOME_MARGIN = 10

_CALL_ERRORS = (400, 401, 409, 503)
_RING = "seconds the operator's phone rings (default [dialing] call_time_to_ext)"
_TALK = "seconds of conversation allowed"
_WAITING = "play the waiting announcement"
_SHOWN = "caller ID shown to the operator instead of the client's number"
_AUTO_ANSWER = (
    "1: the operator's phone answers by itself (the INVITE carries [dialing] "
    "auto_answer_headers); 0: it rings; default [dialing] operator_auto_answer"
)


def _auto_answer(name: str) -> p.Param:
    # no default of its own: absent is the configured one (CallRequest.auto_answer None)
    return p.Param(name, v.flag, p.FLAG_SCHEMA, _AUTO_ANSWER)

MAKE_CALL = Operation(
    methods=("GET", "POST"),
    path="/api/makeCall",
    summary="Operator-first click-to-call",
    description=(
        "Rings the operator (sip); when they answer they hear the waiting "
        "announcement, then the client (phone) is dialled, connected and "
        "recorded. Answers as soon as the call exists; the outcome is in "
        "the history. A repeated external_key with the same parameters "
        "returns the same call_id and places nothing."
    ),
    tag="calls",
    params=(
        p.extension("sip", "operator extension", required=True),
        p.phone("phone", "client number", required=True),
        ORDER_ID.but(required=True),
        EXTERNAL_KEY.but(required=True),
        TRUNK_NUMBER.but(name="trunk"),
        p.seconds("call_time_to_ext", _RING, 1, 600),
        p.seconds("limit_call_time", _TALK, 1, MAX_TALK),
        p.flag("playback_waiting", _WAITING, True),
        p.text("caller_id_for_employee", _SHOWN),
        _auto_answer("auto_answer"),
        p.PBX,
    ),
    answers=(
        Answer(200, "success", {
            "type": "object", "required": ["call_id"],
            "properties": {"call_id": {"type": "string"}},
        }),
    ),
    errors=_CALL_ERRORS,
)  # fmt: skip
_MODEL_ANSWER = Answer(200, "success", {
    "type": "object",
    "required": ["status", "generalCallID"],
    "properties": {
        "status": {"const": "success"},
        "generalCallID": {"type": "string"},
        "result": {"type": ["string", "null"]},
    },
})  # fmt: skip
EXT_TO_PHONE = Operation(
    methods=("POST",),
    path="/api/calls/extToPhone",
    summary="Operator-first call (call model)",
    description=(
        "The flow of makeCall. With async false (the default) the answer waits for "
        "the operator leg's outcome and carries it as result (OPERATOR_PICKUP or "
        "the failing status)."
    ),
    tag="call model",
    params=(
        p.extension("ext_number", "operator extension", required=True),
        p.phone("phone_number", "client number", required=True),
        ORDER_ID,
        EXTERNAL_KEY,
        TRUNK_NUMBER,
        p.seconds("callTimeToExt", _RING, 1, 600),
        p.seconds("limitCallTime", _TALK, 1, MAX_TALK),
        p.flag("playbackWaiting", _WAITING, True),
        p.text("callerIdForEmployee", _SHOWN),
        p.flag("async", "answer at once, without waiting for the operator", False),
        _auto_answer("autoAnswer"),
        p.PBX,
    ),
    answers=(_MODEL_ANSWER,),
    errors=_CALL_ERRORS,
)
PHONE_TO_PHONE = Operation(
    methods=("POST",),
    path="/api/calls/phoneToPhone",
    summary="Connect two outside numbers",
    description=(
        "Rings phoneNumber1, plays it the waiting announcement, then dials "
        "phoneNumber2, both through trunkNumber."
    ),
    tag="call model",
    params=(
        p.phone("phoneNumber1", "the number rung first", required=True),
        p.phone("phoneNumber2", "the number dialled once the first answered", required=True),
        TRUNK_NUMBER.but(required=True),
        ORDER_ID,
        EXTERNAL_KEY,
        p.seconds("limitCallTime", _TALK, 1, MAX_TALK),
        p.flag("playbackWaiting", _WAITING, True),
    ),
    answers=(_MODEL_ANSWER,),
    errors=_CALL_ERRORS,
)
_HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]}},
    "description": "only status without a valid API key (when keys are configured); "
    "with one: version, ami, fastagi and store as well",
}
HEALTH = Operation(
    methods=("GET",),
    path="/health",
    summary="Service health (open; details need an API key)",
    tag="meta",
    answers=(
        Answer(200, "the AMI session is logged in", _HEALTH),
        Answer(503, "the AMI session is down (same body)", _HEALTH),
    ),
    errors=(),
    auth=False,
    formats=False,
)
#: Every route of this module.
OPERATIONS = (MAKE_CALL, EXT_TO_PHONE, PHONE_TO_PHONE, HEALTH)


class CallEndpoints:
    """The routes that place operator-first calls, plus ``/health``."""

    def __init__(
        self,
        calls: CallService,
        *,
        default_trunk: str,
        call_time_to_ext: int,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        clock: Any,
        trunks: Iterable[str] = (),
    ):
        """``trunks``: the trunks a request may name (``[dialing] all_trunks``);
        ``default_trunk`` is always one."""
        self.calls = calls
        self.default_trunk = default_trunk
        self.call_time_to_ext = call_time_to_ext
        self._health = health
        self.clock = clock
        self._known_trunk = p.known_trunk((default_trunk, *trunks))

    def add_routes(self, router: Router) -> None:
        """Register every route of this module on ``router``."""
        p.add_route(router, MAKE_CALL, self.make_call, rules={"trunk": self._known_trunk})
        for op, handler in ((EXT_TO_PHONE, self.ext_to_phone),
                            (PHONE_TO_PHONE, self.phone_to_phone)):  # fmt: skip
            p.add_route(router, op, handler, rules={"trunkNumber": self._known_trunk})
        p.add_route(router, HEALTH, self.health)

    # -- handlers ---------------------------------------------------------------

    async def health(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        ok, body = self._health()
        return ApiResponse(body, status=200 if ok else 503)

    async def make_call(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/makeCall``: answers ``{"call_id"}`` as soon as the call exists."""
        call = CallRequest(
            kind="makeCall",
            first=args["sip"],
            phone=args["phone"],
            order_id=args["order_id"],
            external_key=args["external_key"],
            trunk=args["trunk"] or self.default_trunk,
            call_time_to_ext=args["call_time_to_ext"] or self.call_time_to_ext,
            limit_call_time=args["limit_call_time"],
            playback_waiting=args["playback_waiting"],
            caller_id_for_employee=args["caller_id_for_employee"],
            auto_answer=args["auto_answer"],
        )
        call_id, _created = await self._place(call, args["pbx"])
        return {"call_id": call_id}

    async def ext_to_phone(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``extToPhone``: with ``async`` false waits for the operator leg."""
        call = CallRequest(
            kind="extToPhone",
            first=args["ext_number"],
            phone=args["phone_number"],
            order_id=args["order_id"],
            external_key=args["external_key"],
            trunk=args["trunkNumber"] or self.default_trunk,
            call_time_to_ext=args["callTimeToExt"] or self.call_time_to_ext,
            limit_call_time=args["limitCallTime"],
            playback_waiting=args["playbackWaiting"],
            caller_id_for_employee=args["callerIdForEmployee"],
            auto_answer=args["autoAnswer"],
        )
        wait = not args["async"]
        call_id, created = await self._place(call, args["pbx"])
        answer: dict[str, Any] = {"status": "success", "generalCallID": call_id}
        if wait:
            d = self.calls.operator_outcome(call_id)
            d.addTimeout(call.call_time_to_ext + OUTCOME_MARGIN, self.clock)
            try:
                result = await d
            except defer.TimeoutError:
                result = None
            if result is None:
                result = await self._last_status(call_id)
            answer["result"] = result
        return answer

    async def phone_to_phone(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``phoneToPhone``: rings ``phoneNumber1`` first, then ``phoneNumber2``."""
        call = CallRequest(
            kind="phoneToPhone",
            first=args["phoneNumber1"],
            first_is_phone=True,
            phone=args["phoneNumber2"],
            trunk=args["trunkNumber"],
            order_id=args["order_id"],
            external_key=args["external_key"],
            call_time_to_ext=self.call_time_to_ext,
            limit_call_time=args["limitCallTime"],
            playback_waiting=args["playbackWaiting"],
        )
        call_id, _created = await self._place(call)
        return {"status": "success", "generalCallID": call_id}

    # -- helpers ----------------------------------------------------------------

    async def _place(self, call: CallRequest, pbx: str | None = None) -> tuple[str, bool]:
        if pbx is None:
            return await self.calls.place(call)
        return await self.calls.place(call, pbx=pbx)

    async def _last_status(self, call_id: str) -> str | None:
        entries = await self.calls.store.statuses(call_id)
        for entry in reversed(entries):
            if entry["status"] == st.OPERATOR_PICKUP or entry["status"] in st.FINAL:
                return entry["status"]
        return entries[-1]["status"] if entries else None

    # -- OpenAPI ----------------------------------------------------------------

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        return paths(OPERATIONS)
