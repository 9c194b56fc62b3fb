"""Event subscriptions and the callback of an extension (CONTRACT section 6).

- ``POST /extension/{extension_id}/event/`` ``{"url", "method", "event_type"}``
  → 201 ``{"id", "url", "method", "event_type", "secret"}``;
- ``GET /extension/{extension_id}/event/`` → ``{"subscriptions": [...]}``;
- ``GET /extension/{extension_id}/event/{id}`` → the subscription with its
  ``delivery`` state (pending, attempts, last error, delivered/given up
  counters, the give-up age);
- ``DELETE /extension/{extension_id}/event/{id}`` → 204;
- ``GET /extension/{extension_id}/event/{id}/deliveries?outcome=&limit=`` →
  ``{"deliveries": [...]}``, the delivery log, newest first;
- ``POST /extension/{extension_id}/callback/`` ``{"dst_num", "src_num": [...]}``
  → 201 ``{"call_api_id", "call_id"}``.

``extension_id`` is an extension (``200``) or, as in seed 004, an extension
written with a leading ``@`` (``@200``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agi_app import validation as v
from agi_app.calls.service import CallRequest, CallService, PBXUnavailable
from agi_app.events.service import (
    EVENT_TYPES,
    EventService,
    check_event_type,
    check_method,
    check_url,
)
from agi_app.events.store import DELIVERY_OUTCOMES
from agi_app.web import openapi as oa
from agi_app.web.api import ApiError, ApiRequest, ApiResponse, Router
from agi_app.web.params import integer, optional_integer

__all__ = ["ExtensionEventEndpoints", "parse_extension_id"]

_MAX_SUB_ID = 2**63 - 1
#: most entries of the delivery log answered at once
MAX_LOG_LIMIT = 1000
#: most source extensions a callback rings together (each is a Dial target)
MAX_CALLBACK_SOURCES = 20


def parse_extension_id(value: str) -> str:
    """The extension named by a path's ``{extension_id}`` (``200`` or ``@200``)."""
    return v.extension(value[1:] if value.startswith("@") else value, "extension_id")


def _sub_id(value: str) -> int:
    return integer(value, "id", minimum=1, maximum=_MAX_SUB_ID)


def _unknown_subscription() -> ApiError:
    return ApiError(404, "unknown_subscription", "no such subscription of this extension")


class ExtensionEventEndpoints:
    """The routes of this module over an :class:`EventService` and, for the
    callback, a :class:`CallService`.

    ``on_callback(call_id, owner, sources)`` is told of every callback placed
    (the event generator uses it to leave out the owner's self events).
    """

    def __init__(
        self,
        events: EventService,
        calls: CallService | None,
        *,
        default_trunk: str,
        call_time_to_ext: int,
        on_callback: Callable[[str, str, list[str]], object] | None = None,
    ):
        self.events = events
        self.calls = calls
        self.default_trunk = default_trunk
        self.call_time_to_ext = call_time_to_ext
        self._on_callback = on_callback

    def add_routes(self, router: Router) -> None:
        """Register every route of this module on ``router``."""
        base = "/extension/{extension_id}"
        router.add(("POST",), f"{base}/event", self.subscribe)
        router.add(("GET",), f"{base}/event", self.list_subscriptions)
        router.add(("GET",), f"{base}/event/{{sub_id}}", self.get_subscription)
        router.add(("DELETE",), f"{base}/event/{{sub_id}}", self.delete_subscription)
        router.add(("GET",), f"{base}/event/{{sub_id}}/deliveries", self.deliveries)
        router.add(("POST",), f"{base}/callback", self.callback)

    # -- subscriptions ----------------------------------------------------------

    async def subscribe(self, req: ApiRequest, extension_id: str) -> ApiResponse:
        extension = parse_extension_id(extension_id)
        url = check_url(req.params.get("url"))
        method = check_method(req.params.get("method"))
        event_type = check_event_type(req.params.get("event_type"))
        sub = await self.events.subscribe(extension, url=url, method=method, event_type=event_type)
        return ApiResponse(sub, status=201)

    async def list_subscriptions(self, req: ApiRequest, extension_id: str) -> dict[str, Any]:
        extension = parse_extension_id(extension_id)
        return {"subscriptions": await self.events.subscriptions(extension)}

    async def get_subscription(
        self, req: ApiRequest, extension_id: str, sub_id: str
    ) -> dict[str, Any]:
        extension = parse_extension_id(extension_id)
        sub = await self.events.subscription(extension, _sub_id(sub_id))
        if sub is None:
            raise _unknown_subscription()
        return sub

    async def delete_subscription(
        self, req: ApiRequest, extension_id: str, sub_id: str
    ) -> ApiResponse:
        extension = parse_extension_id(extension_id)
        if not await self.events.unsubscribe(extension, _sub_id(sub_id)):
            raise _unknown_subscription()
        return ApiResponse(None, status=204)

    async def deliveries(self, req: ApiRequest, extension_id: str, sub_id: str) -> dict[str, Any]:
        extension = parse_extension_id(extension_id)
        outcome = req.param("outcome", None)
        if outcome is not None and outcome not in DELIVERY_OUTCOMES:
            raise ApiError(
                400,
                "invalid_outcome",
                f"outcome must be one of {', '.join(DELIVERY_OUTCOMES)}",
                field="outcome",
            )
        limit = optional_integer(req, "limit", 100, minimum=1, maximum=MAX_LOG_LIMIT)
        log = await self.events.deliveries(extension, _sub_id(sub_id), outcome=outcome, limit=limit)
        if log is None:
            raise _unknown_subscription()
        return {"deliveries": log}

    # -- callback ---------------------------------------------------------------

    async def callback(self, req: ApiRequest, extension_id: str) -> ApiResponse:
        owner = parse_extension_id(extension_id)
        dst = v.phone(req.params.get("dst_num"), "dst_num")
        sources = [v.extension(s, "src_num") for s in req.param_list("src_num")]
        if not sources:
            raise ApiError(400, "missing_src_num", "src_num is required", field="src_num")
        if len(set(sources)) != len(sources):
            raise ApiError(400, "invalid_src_num", "src_num repeats an extension", field="src_num")
        if len(sources) > MAX_CALLBACK_SOURCES:
            raise ApiError(
                400,
                "invalid_src_num",
                f"src_num lists more than {MAX_CALLBACK_SOURCES} extensions",
                field="src_num",
            )
        if self.calls is None:
            raise PBXUnavailable(message="calls cannot be placed")
        call = CallRequest(
            kind="callback",
            first=sources[0],
            # several: rung together, the first to answer talks to dst_num
            group=tuple(sources) if len(sources) > 1 else (),
            phone=dst,
            trunk=self.default_trunk,
            call_time_to_ext=self.call_time_to_ext,
        )
        call_id, _created = await self.calls.place(call)
        if self._on_callback is not None:
            self._on_callback(call_id, owner, sources)
        return ApiResponse({"call_api_id": call_id, "call_id": call_id}, status=201)

    # -- OpenAPI ------------------------------------------------------------------

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        return openapi_paths()


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": schema},
            "application/x-www-form-urlencoded": {"schema": schema},
        },
    }


def _ok(status: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path items of this module's routes."""
    ext = {
        "name": "extension_id",
        "in": "path",
        "required": True,
        "description": "extension (200), or @200 as in seed 004",
        "schema": {"type": "string", "pattern": r"^@?[A-Za-z0-9_-]{1,32}$"},
    }
    sub = {"name": "sub_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    subscription = {
        "type": "object",
        "required": ["id", "url", "method", "event_type", "secret"],
        "properties": {
            "id": {"type": "integer"},
            "url": {"type": "string", "format": "uri"},
            "method": {"enum": ["GET", "POST"]},
            "event_type": {"enum": list(EVENT_TYPES)},
            "secret": {"type": "string", "description": "key of the X-Signature HMAC"},
        },
    }
    detailed = {
        **subscription,
        "properties": {
            **subscription["properties"],
            "delivery": {
                "type": "object",
                "description": "what is queued and what happened to the deliveries",
                "properties": {
                    "pending": {"type": "integer"},
                    "oldest_pending_at": {"type": ["number", "null"]},
                    "attempts": {"type": "integer", "description": "failed attempts of the oldest"},
                    "last_error": {"type": ["string", "null"]},
                    "last_error_at": {"type": ["number", "null"]},
                    "delivered": {"type": "integer"},
                    "given_up": {"type": "integer"},
                    "last_delivered_at": {"type": ["number", "null"]},
                    "give_up_after": {"type": "number", "description": "seconds"},
                },
            },
        },
    }
    new_sub = {
        "type": "object",
        "required": ["url", "event_type"],
        "properties": {
            "url": {"type": "string", "description": "http:// or https:// URL"},
            "method": {"enum": ["GET", "POST"], "default": "POST"},
            "event_type": {"enum": list(EVENT_TYPES)},
        },
    }
    tag = ["events"]
    errors = oa.error_responses((400, 401))
    not_found = oa.error_responses((400, 401, 404))
    return {
        "/extension/{extension_id}/event/": {
            "parameters": [ext],
            "post": {
                "summary": "Subscribe to an event type of the extension",
                "tags": tag,
                "requestBody": _json_body(new_sub),
                "responses": {**_ok("201", subscription, "created"), **errors},
            },
            "get": {
                "summary": "The extension's subscriptions",
                "tags": tag,
                "responses": {
                    **_ok(
                        "200",
                        {
                            "type": "object",
                            "properties": {
                                "subscriptions": {"type": "array", "items": subscription}
                            },
                        },
                        "success",
                    ),
                    **errors,
                },
            },
        },
        "/extension/{extension_id}/event/{sub_id}": {
            "parameters": [ext, sub],
            "get": {
                "summary": "One subscription with its delivery state",
                "tags": tag,
                "responses": {**_ok("200", detailed, "success"), **not_found},
            },
            "delete": {
                "summary": "Delete a subscription and its queued deliveries",
                "tags": tag,
                "responses": {"204": {"description": "deleted"}, **not_found},
            },
        },
        "/extension/{extension_id}/event/{sub_id}/deliveries": {
            "parameters": [ext, sub],
            "get": {
                "summary": "The delivery log of a subscription, newest first",
                "tags": tag,
                "parameters": [
                    oa.param("outcome", {"enum": list(DELIVERY_OUTCOMES)}, "only this outcome"),
                    oa.param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LOG_LIMIT},
                        "entries (100)",
                    ),
                ],
                "responses": {**_ok("200", {"type": "object"}, "success"), **not_found},
            },
        },
        "/extension/{extension_id}/callback/": {
            "parameters": [ext],
            "post": {
                "summary": "Ring the source extensions together, then connect the first "
                "to answer with dst_num",
                "tags": tag,
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["dst_num", "src_num"],
                        "properties": {
                            "dst_num": {"type": "string", "pattern": r"^\+?[0-9]{3,15}$"},
                            "src_num": {
                                "type": "array",
                                "items": {"type": "string"},
                                "minItems": 1,
                                "maxItems": MAX_CALLBACK_SOURCES,
                            },
                        },
                    }
                ),
                "responses": {
                    **_ok(
                        "201",
                        {
                            "type": "object",
                            "properties": {
                                "call_api_id": {"type": "string"},
                                "call_id": {"type": "string"},
                            },
                        },
                        "the call was created",
                    ),
                    **oa.error_responses((400, 401, 503)),
                },
            },
        },
    }
