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
    METHODS,
    EventService,
    check_event_type,
    check_method,
    check_url,
)
from agi_app.events.store import DELIVERY_OUTCOMES
from agi_app.web import params as p
from agi_app.web.api import ApiError, ApiRequest, ApiResponse, Router
from agi_app.web.openapi import paths
from agi_app.web.params import EXTENSION_ID, PATH, Answer, Operation, Param

__all__ = ["OPERATIONS", "ExtensionEventEndpoints", "parse_extension_id"]

_MAX_SUB_ID = 2**63 - 1
#: most entries of the delivery log answered at once
MAX_LOG_LIMIT = 1000
#: most source extensions a callback rings together (each is a Dial target)
MAX_CALLBACK_SOURCES = 20


def parse_extension_id(value: str) -> str:
    """The extension named by a path's ``{extension_id}`` (``200`` or ``@200``)."""
    return EXTENSION_ID.check(value, "extension_id")


def _unknown_subscription() -> ApiError:
    return ApiError(404, "unknown_subscription", "no such subscription of this extension")


def _sources(values: list[Any], field: str) -> list[str]:
    sources = [v.extension(s, field) for s in values]
    if len(set(sources)) != len(sources):
        raise v.InvalidInput(field, f"{field} repeats an extension")
    if len(sources) > MAX_CALLBACK_SOURCES:
        raise v.InvalidInput(
            field, f"{field} lists more than {MAX_CALLBACK_SOURCES} extensions"
        )
    return sources


# -- declarations -------------------------------------------------------------------

_TAG = "events"
_SUB_ID = p.whole_number(
    "sub_id", "the subscription's id", 1, _MAX_SUB_ID, required=True, location=PATH, field="id"
)
_SUBSCRIPTION = {
    "type": "object",
    "required": ["id", "url", "method", "event_type", "secret"],
    "properties": {
        "id": {"type": "integer"},
        "url": {"type": "string", "format": "uri"},
        "method": {"enum": list(METHODS)},
        "event_type": {"enum": list(EVENT_TYPES)},
        "secret": {"type": "string", "description": "key of the X-Signature HMAC"},
    },
}
_DETAILED = {
    **_SUBSCRIPTION,
    "properties": {
        **_SUBSCRIPTION["properties"],
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

SUBSCRIBE = Operation(
    methods=("POST",),
    path="/extension/{extension_id}/event/",
    summary="Subscribe to an event type of the extension",
    tag=_TAG,
    params=(
        EXTENSION_ID,
        Param("url", check_url, {"type": "string", "format": "uri"},
              "where deliveries go: an http:// or https:// URL", required=True),
        p.any_case_choice("method", "how deliveries are made", METHODS, check_method,
                          default="POST"),
        p.any_case_choice("event_type", "the event type", EVENT_TYPES, check_event_type,
                          required=True),
    ),
    answers=(Answer(201, "created", _SUBSCRIPTION),),
)  # fmt: skip
SUBSCRIPTIONS = Operation(
    methods=("GET",),
    path="/extension/{extension_id}/event/",
    summary="The extension's subscriptions",
    tag=_TAG,
    params=(EXTENSION_ID,),
    answers=(
        Answer(200, "success", {
            "type": "object",
            "properties": {"subscriptions": {"type": "array", "items": _SUBSCRIPTION}},
        }),
    ),
)  # fmt: skip
SUBSCRIPTION = Operation(
    methods=("GET",),
    path="/extension/{extension_id}/event/{sub_id}",
    summary="One subscription with its delivery state",
    tag=_TAG,
    params=(EXTENSION_ID, _SUB_ID),
    answers=(Answer(200, "success", _DETAILED),),
    errors=(400, 401, 404),
)
UNSUBSCRIBE = Operation(
    methods=("DELETE",),
    path="/extension/{extension_id}/event/{sub_id}",
    summary="Delete a subscription and its queued deliveries",
    tag=_TAG,
    params=(EXTENSION_ID, _SUB_ID),
    answers=(Answer(204, "deleted"),),
    errors=(400, 401, 404),
)
DELIVERIES = Operation(
    methods=("GET",),
    path="/extension/{extension_id}/event/{sub_id}/deliveries",
    summary="The delivery log of a subscription, newest first",
    tag=_TAG,
    params=(
        EXTENSION_ID,
        p.choice("outcome", "only this outcome", DELIVERY_OUTCOMES),
        p.whole_number("limit", "at most this many entries", 1, MAX_LOG_LIMIT, default=100),
        _SUB_ID,
    ),
    answers=(Answer(200, "success", {"type": "object"}),),
    errors=(400, 401, 404),
)
_EXTENSION_SCHEMA = v.EXTENSION.schema()
CALLBACK = Operation(
    methods=("POST",),
    path="/extension/{extension_id}/callback/",
    summary="Ring the source extensions together, then connect the first to answer "
    "with dst_num",
    tag=_TAG,
    params=(
        EXTENSION_ID,
        p.phone("dst_num", "the number to call back", required=True),
        Param(
            "src_num", _sources,
            {"anyOf": [_EXTENSION_SCHEMA, {
                "type": "array", "items": _EXTENSION_SCHEMA, "minItems": 1,
                "maxItems": MAX_CALLBACK_SOURCES, "uniqueItems": True,
            }]},
            "the extensions rung together (one, or a list)", required=True, many=True,
        ),
    ),
    answers=(
        Answer(201, "the call was created", {
            "type": "object",
            "properties": {"call_api_id": {"type": "string"}, "call_id": {"type": "string"}},
        }),
    ),
    errors=(400, 401, 503),
)  # fmt: skip
#: Every route of this module.
OPERATIONS = (SUBSCRIBE, SUBSCRIPTIONS, SUBSCRIPTION, UNSUBSCRIBE, DELIVERIES, CALLBACK)


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path items of this module's routes."""
    return paths(OPERATIONS)


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
        p.add_route(router, SUBSCRIBE, self.subscribe)
        p.add_route(router, SUBSCRIPTIONS, self.list_subscriptions)
        p.add_route(router, SUBSCRIPTION, self.get_subscription)
        p.add_route(router, UNSUBSCRIBE, self.delete_subscription)
        p.add_route(router, DELIVERIES, self.deliveries)
        p.add_route(router, CALLBACK, self.callback)

    # -- subscriptions ----------------------------------------------------------

    async def subscribe(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        sub = await self.events.subscribe(
            args["extension_id"], url=args["url"], method=args["method"],
            event_type=args["event_type"],
        )  # fmt: skip
        return ApiResponse(sub, status=201)

    async def list_subscriptions(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        return {"subscriptions": await self.events.subscriptions(args["extension_id"])}

    async def get_subscription(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        sub = await self.events.subscription(args["extension_id"], args["sub_id"])
        if sub is None:
            raise _unknown_subscription()
        return sub

    async def delete_subscription(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        if not await self.events.unsubscribe(args["extension_id"], args["sub_id"]):
            raise _unknown_subscription()
        return ApiResponse(None, status=204)

    async def deliveries(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        log = await self.events.deliveries(
            args["extension_id"], args["sub_id"], outcome=args["outcome"], limit=args["limit"]
        )
        if log is None:
            raise _unknown_subscription()
        return {"deliveries": log}

    # -- callback ---------------------------------------------------------------

    async def callback(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        owner, sources = args["extension_id"], args["src_num"]
        if self.calls is None:
            raise PBXUnavailable(message="calls cannot be placed")
        call = CallRequest(
            kind="callback",
            first=sources[0],
            # several: rung together, the first to answer talks to dst_num
            group=tuple(sources) if len(sources) > 1 else (),
            phone=args["dst_num"],
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
