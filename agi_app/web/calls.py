"""Click-to-call endpoints (CONTRACT 3.1 and 4) and ``GET /health``.

- ``/api/makeCall.{json,xml}`` — the CRM's operator-first call;
- ``POST /api/calls/extToPhone`` and ``/api/calls/phoneToPhone`` — the same
  flow with the call model's parameter names.

Each handler only parses and checks parameters (:mod:`agi_app.validation`)
into a :class:`~agi_app.calls.service.CallRequest` and hands it to the
:class:`~agi_app.calls.service.CallService`; nothing unchecked reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from agi_app import validation as v
from agi_app.calls import statuses as st
from agi_app.calls.service import CallRequest, CallService
from agi_app.web import openapi as oa
from agi_app.web.api import ApiRequest, ApiResponse, Router

__all__ = ["CallEndpoints"]

#: longest limit_call_time accepted, seconds (a day)
MAX_TALK = 86400
#: extra seconds extToPhone (async=false) waits beyond the ring time
OUTCOME_MARGIN = 10


def _opt(req: ApiRequest, name: str, check: Callable[[Any, str], Any]) -> Any:
    value = req.params.get(name)
    if value is None or value == "":
        return None
    return check(value, name)


def _secs(lo: int, hi: int) -> Callable[[Any, str], int]:
    return lambda value, name: v.seconds(value, name, lo, hi)


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
    ):
        self.calls = calls
        self.default_trunk = default_trunk
        self.call_time_to_ext = call_time_to_ext
        self._health = health
        self.clock = clock

    def add_routes(self, router: Router) -> None:
        """Register every route of this module on ``router``."""
        router.add(("GET", "POST"), "/api/makeCall", self.make_call)
        router.add(("POST",), "/api/calls/extToPhone", self.ext_to_phone)
        router.add(("POST",), "/api/calls/phoneToPhone", self.phone_to_phone)
        router.add(("GET",), "/health", self.health, auth=False, formats=False)

    # -- handlers ---------------------------------------------------------------

    async def health(self, req: ApiRequest) -> ApiResponse:
        ok, body = self._health()
        return ApiResponse(body, status=200 if ok else 503)

    async def make_call(self, req: ApiRequest) -> dict[str, Any]:
        """``/api/makeCall``: answers ``{"call_id"}`` as soon as the call exists."""
        call = CallRequest(
            kind="makeCall",
            first=v.extension(req.params.get("sip"), "sip"),
            phone=v.phone(req.params.get("phone"), "phone"),
            order_id=v.identifier(req.params.get("order_id"), "order_id"),
            external_key=v.identifier(req.params.get("external_key"), "external_key"),
            trunk=_opt(req, "trunk", v.extension) or self.default_trunk,
            call_time_to_ext=_opt(req, "call_time_to_ext", _secs(1, 600))
            or self.call_time_to_ext,
            limit_call_time=_opt(req, "limit_call_time", _secs(1, MAX_TALK)),
            playback_waiting=_flag(req, "playback_waiting", True),
            caller_id_for_employee=_opt(req, "caller_id_for_employee", v.display_text),
        )
        call_id, _created = await self._place(call)
        return {"call_id": call_id}

    async def ext_to_phone(self, req: ApiRequest) -> dict[str, Any]:
        """``extToPhone``: with ``async`` false waits for the operator leg."""
        call = CallRequest(
            kind="extToPhone",
            first=v.extension(req.params.get("ext_number"), "ext_number"),
            phone=v.phone(req.params.get("phone_number"), "phone_number"),
            order_id=_opt(req, "order_id", v.identifier),
            external_key=_opt(req, "external_key", v.identifier),
            trunk=_opt(req, "trunkNumber", v.extension) or self.default_trunk,
            call_time_to_ext=_opt(req, "callTimeToExt", _secs(1, 600)) or self.call_time_to_ext,
            limit_call_time=_opt(req, "limitCallTime", _secs(1, MAX_TALK)),
            playback_waiting=_flag(req, "playbackWaiting", True),
            caller_id_for_employee=_opt(req, "callerIdForEmployee", v.display_text),
        )
        wait = not _flag(req, "async", False)
        call_id, created = await self._place(call)
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

    async def phone_to_phone(self, req: ApiRequest) -> dict[str, Any]:
        """``phoneToPhone``: rings ``phoneNumber1`` first, then ``phoneNumber2``."""
        call = CallRequest(
            kind="phoneToPhone",
            first=v.phone(req.params.get("phoneNumber1"), "phoneNumber1"),
            first_is_phone=True,
            phone=v.phone(req.params.get("phoneNumber2"), "phoneNumber2"),
            trunk=v.extension(req.params.get("trunkNumber"), "trunkNumber"),
            order_id=_opt(req, "order_id", v.identifier),
            external_key=_opt(req, "external_key", v.identifier),
            call_time_to_ext=self.call_time_to_ext,
            limit_call_time=_opt(req, "limitCallTime", _secs(1, MAX_TALK)),
            playback_waiting=_flag(req, "playbackWaiting", True),
        )
        call_id, _created = await self._place(call)
        return {"status": "success", "generalCallID": call_id}

    # -- helpers ----------------------------------------------------------------

    async def _place(self, call: CallRequest) -> tuple[str, bool]:
        return await self.calls.place(call)

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
        phone = {"type": "string", "pattern": r"^\+?[0-9]{3,15}$"}
        ext = {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,32}$"}
        ident = {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}
        secs = {"type": "integer", "minimum": 1}
        flag = {"type": ["integer", "boolean", "string"], "enum": [0, 1, True, False, "0", "1"]}
        text = {"type": "string", "maxLength": 64}
        make_call = oa.api_operation(
            summary="Operator-first click-to-call",
            description=(
                "Rings the operator (sip); when they answer they hear the waiting "
                "announcement, then the client (phone) is dialled, connected and "
                "recorded. Answers as soon as the call exists; the outcome is in "
                "the history. A repeated external_key with the same parameters "
                "returns the same call_id and places nothing."
            ),
            parameters=[
                oa.param("sip", ext, "operator extension", required=True),
                oa.param("phone", phone, "client number", required=True),
                oa.param("order_id", ident, "the CRM's order", required=True),
                oa.param("external_key", ident, "idempotency key", required=True),
                oa.param("call_time_to_ext", secs, "seconds the operator's phone rings"),
                oa.param("limit_call_time", secs, "seconds of conversation allowed"),
                oa.param("playback_waiting", flag, "play the waiting announcement (1)"),
                oa.param("caller_id_for_employee", text, "caller ID shown to the operator"),
                oa.param("trunk", ext, "trunk the client is dialled through"),
            ],
            response={
                "type": "object",
                "required": ["call_id"],
                "properties": {"call_id": {"type": "string"}},
            },
            errors=(400, 401, 409, 503),
            tag="calls",
        )
        model_answer = {
            "type": "object",
            "required": ["status", "generalCallID"],
            "properties": {
                "status": {"const": "success"},
                "generalCallID": {"type": "string"},
                "result": {"type": ["string", "null"]},
            },
        }

        def body(fields: dict[str, tuple[dict, bool]]) -> dict[str, Any]:
            schema = {
                "type": "object",
                "properties": {k: s for k, (s, _r) in fields.items()},
                "required": [k for k, (_s, r) in fields.items() if r],
            }
            return {
                "post": {
                    "tags": ["call model"],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": schema},
                            "application/x-www-form-urlencoded": {"schema": schema},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "success",
                            "content": {"application/json": {"schema": model_answer}},
                        },
                        **oa.error_responses((400, 401, 409, 503)),
                    },
                }
            }

        ext_to_phone = body(
            {
                "ext_number": (ext, True),
                "phone_number": (phone, True),
                "callTimeToExt": (secs, False),
                "limitCallTime": (secs, False),
                "playbackWaiting": (flag, False),
                "trunkNumber": (ext, False),
                "callerIdForEmployee": (text, False),
                "async": (flag, False),
                "order_id": (ident, False),
                "external_key": (ident, False),
            }
        )
        ext_to_phone["post"]["summary"] = "Operator-first call (call model)"
        phone_to_phone = body(
            {
                "phoneNumber1": (phone, True),
                "phoneNumber2": (phone, True),
                "trunkNumber": (ext, True),
                "limitCallTime": (secs, False),
                "playbackWaiting": (flag, False),
                "order_id": (ident, False),
                "external_key": (ident, False),
            }
        )
        phone_to_phone["post"]["summary"] = "Connect two outside numbers"
        health_schema = {"type": "object", "required": ["status", "ami"]}
        return {
            "/api/makeCall": make_call,
            "/api/calls/extToPhone": ext_to_phone,
            "/api/calls/phoneToPhone": phone_to_phone,
            "/health": {
                "get": {
                    "summary": "Service health (open, no API key)",
                    "tags": ["meta"],
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "the AMI session is logged in",
                            "content": {"application/json": {"schema": health_schema}},
                        },
                        "503": {
                            "description": "the AMI session is down (same body)",
                            "content": {"application/json": {"schema": health_schema}},
                        },
                    },
                }
            },
        }


def _flag(req: ApiRequest, name: str, default: bool) -> bool:
    value = req.params.get(name)
    if value is None or value == "":
        return default
    return v.flag(value, name)
