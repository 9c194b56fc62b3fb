"""The supervisor's live dashboard (``/static/dashboard.html``, docs/dashboard.md).

- :class:`Dashboard` makes the snapshot the page shows: the operators and
  their state, the calls in progress, today's outcomes per hour and the
  webhook backlog.  Each figure comes from the very method the rest of the
  API answers from, so the page and the API cannot disagree:

  ============================  ==============================================
  panel                         the same as
  ============================  ==============================================
  operators: ``status``,        ``/api/sipList`` (``Store.operators``)
  ``since``
  operators: ``activity``,      ``/extension/{sip}/current_calls/``
  calls in progress             (``CallTracker.view`` of the live calls)
  outcomes per hour             ``/api/callStats`` without parameters (today,
                                by hour: :meth:`StatsEndpoints.call_stats`)
  webhook backlog               ``agi_app_webhook_backlog`` and its neighbours
                                of ``/metrics`` (``WebhookBacklog.refresh``)
  ============================  ==============================================

- ``GET /api/dashboard`` answers that snapshot (API key);
- ``POST /api/supervisorToken`` mints the supervisor token the page connects
  to the WebSocket with (:mod:`agi_app.ws.tokens`): it sees every
  extension's calls, read only; the page never holds an API key.

The WebSocket side (:class:`agi_app.ws.WidgetHub`) is handed
:meth:`Dashboard.snapshot` and sends it to supervisor connections when
something changes.
"""

from __future__ import annotations

import math
from typing import Any

from agi_app.calls import statuses as st
from agi_app.errors import Conflict
from agi_app.times import iso_time, parse_time
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, Router
from agi_app.web.openapi import paths
from agi_app.web.params import MAX_PER_PAGE
from agi_app.web.stats import StatsEndpoints
from agi_app.ws import tokens

__all__ = ["ACTIVITIES", "OPERATIONS", "Dashboard", "DashboardEndpoints", "activity"]

#: what an operator is doing, as the dashboard shows it
ACTIVITIES = ("offline", "idle", "ringing", "talking", "hold", "listening")
# call_mdl state → activity; an operator in several calls shows the busiest
_ACTIVITY_OF_STATE = {
    "ringing": "ringing",
    "up": "talking",
    "talking": "talking",
    "hold": "hold",
    "parked": "hold",
    "listening": "listening",
}
_RANK = {name: n for n, name in enumerate(("idle", "listening", "ringing", "hold", "talking"))}
#: the final statuses, in the order of the contract (the chart's stack order)
FINALS = tuple(s for s in st.STATUSES if s in st.FINAL_STATUSES)


def activity(status: str, states: list[str]) -> str:
    """An operator's activity from its ``sipList`` status and the ``state``
    of each of its current calls: ``offline`` when the PBX says so, else the
    busiest of its calls (talking > hold > ringing > listening), else ``idle``."""
    if status == "offline":
        return "offline"
    found = "idle"
    for state in states:
        candidate = _ACTIVITY_OF_STATE.get(state)
        if candidate is not None and _RANK[candidate] > _RANK[found]:
            found = candidate
    return found


def _call_row(view: dict[str, Any], extension: str | None, now: float) -> dict[str, Any]:
    """One line of the calls in progress from a ``call_mdl``."""
    incoming = view["call_flow"] == "in"
    other = view["caller_extension"] if incoming else view["called_extension"]
    answered = parse_time(view["answer_time_gmt"].replace(" ", "T") + "Z") \
        if view["answer_time_gmt"] else None  # fmt: skip
    began = parse_time(view["init_time_gmt"].replace(" ", "T") + "Z") \
        if view["init_time_gmt"] else None  # fmt: skip
    since = answered if answered is not None else began
    return {
        "call_api_id": view["call_api_id"],
        "call_id": view["call_id"],
        "extension": extension,
        "direction": view["call_flow"],
        # the other party as current_calls shows it
        "number": view["caller_id_number"] if incoming else view["called_number"],
        "other_extension": other["id"] if other else None,
        "state": view["state"],
        "init_time_gmt": view["init_time_gmt"],
        "answer_time_gmt": view["answer_time_gmt"],
        "duration_s": max(0, math.floor(now - since)) if since is not None else 0,
    }


class Dashboard:
    """The dashboard's snapshot, read from the parts the API reads.

    :param store: the store (operators, the call log)
    :param tracker: the :class:`~agi_app.live.tracker.CallTracker`
    :param more_trackers: the trackers of the further PBXs (``[ami:NAME]``)
    :param backlog: the webhook outbox reader of ``/metrics``
        (:class:`agi_app.metrics.WebhookBacklog`), or None
    :param clock: an ``IReactorTime`` ("today", call durations)
    """

    def __init__(
        self, store: Any, tracker: Any, *, backlog: Any, clock: Any, more_trackers: Any = ()
    ):
        self._store = store
        self._trackers = (tracker, *more_trackers)
        self._backlog = backlog
        self._clock = clock
        self._stats = StatsEndpoints(store, clock=clock)

    async def operators(self) -> list[dict[str, Any]]:
        """Every operator as ``/api/sipList`` lists it (all pages)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            result = await self._store.operators(page, MAX_PER_PAGE, None)
            found.extend({"sip": o["sip"], "status": o["status"], "since": o["since"],
                          "pbx": o.get("pbx", "default")}
                         for o in result.items)  # fmt: skip
            if len(result.items) < MAX_PER_PAGE or len(found) >= result.total:
                return found
            page += 1

    def calls(self, now: float) -> list[dict[str, Any]]:
        """The calls in progress: one line per extension taking part in a
        call (its ``current_calls`` view), one for a call no extension takes
        part in (a phone-to-phone or announcement call), oldest first."""
        rows = []
        for tracker in self._trackers:
            for call in tracker.calls():
                extensions = sorted({leg.extension for leg in call.live_legs()
                                     if leg.extension and leg.party})  # fmt: skip
                for extension in extensions:
                    rows.append(_call_row(tracker.view(call, extension), extension, now))
                if not extensions:
                    view = tracker.view(call, None)
                    if view["real_call"]:
                        rows.append(_call_row(view, None, now))
        return rows

    async def outcomes(self) -> dict[str, Any]:
        """Today's calls per hour by final status: ``/api/callStats`` with
        no parameters, answered by the same method."""
        return await self._stats.call_stats(None, {"from": None, "to": None, "by": "hour"})  # type: ignore[arg-type]

    async def webhooks(self) -> dict[str, Any] | None:
        """The outbox as ``/metrics`` shows it now (None when it cannot be read)."""
        if self._backlog is None:
            return None
        await self._backlog.refresh()
        if self._backlog.found is None:
            return None
        backlog, age, given_up = self._backlog.found
        return {"backlog": backlog, "oldest_age_s": round(age, 1), "given_up": given_up}

    async def snapshot(self) -> dict[str, Any]:
        """Everything the page shows (the answer of ``GET /api/dashboard``)."""
        now = self._clock.seconds()
        calls = self.calls(now)
        states: dict[str, list[str]] = {}
        for row in calls:
            if row["extension"]:
                states.setdefault(row["extension"], []).append(row["state"])
        operators = await self.operators()
        for o in operators:
            o["activity"] = activity(o["status"], states.get(o["sip"], []))
            o["calls"] = len(states.get(o["sip"], ()))
        outcomes = await self.outcomes()
        totals = {s: sum(h[s] for h in outcomes["hours"]) for s in FINALS}
        return {
            "time": iso_time(now),
            "operators": operators,
            "operator_counts": {s: sum(1 for o in operators if o["status"] == s)
                                for s in ("online", "inuse", "offline")},  # fmt: skip
            "calls": calls,
            "outcomes": outcomes,
            "outcome_totals": {**totals, "total": sum(totals.values())},
            "webhooks": await self.webhooks(),
        }


# -- HTTP ----------------------------------------------------------------------

_INT = {"type": "integer", "minimum": 0}
_TEXT = {"type": ["string", "null"]}
_SNAPSHOT = {
    "type": "object",
    "required": ["time", "operators", "operator_counts", "calls", "outcomes",
                 "outcome_totals", "webhooks"],
    "properties": {
        "time": {"type": "string", "description": "when the snapshot was made (UTC)"},
        "operators": {"type": "array", "items": {
            "type": "object",
            "required": ["sip", "status", "since", "activity", "calls"],
            "properties": {
                "sip": {"type": "string"},
                "status": {"enum": ["online", "inuse", "offline"],
                           "description": "as /api/sipList"},
                "since": {"type": "string", "description": "as /api/sipList"},
                "activity": {"enum": list(ACTIVITIES),
                             "description": "from the operator's current calls"},
                "calls": {**_INT, "description": "current calls of the operator"},
            },
        }},
        "operator_counts": {"type": "object", "description": "operators per sipList status",
                            "properties": {s: _INT for s in ("online", "inuse", "offline")}},
        "calls": {"type": "array", "description": "calls in progress, oldest first", "items": {
            "type": "object",
            "required": ["call_api_id", "extension", "direction", "number", "state",
                         "duration_s"],
            "properties": {
                "call_api_id": {"type": "string"},
                "call_id": {**_TEXT, "description": "agi_app's call id (calls it placed)"},
                "extension": {**_TEXT, "description": "the extension whose line this is "
                              "(null: no extension takes part)"},
                "direction": {"enum": ["in", "out"]},
                "number": {**_TEXT, "description": "the other party's number, as "
                           "current_calls shows it"},
                "other_extension": _TEXT,
                "state": {"type": "string", "description": "the call_mdl state"},
                "init_time_gmt": _TEXT,
                "answer_time_gmt": _TEXT,
                "duration_s": {**_INT, "description": "seconds since the answer, or since "
                               "the call began while it is not answered"},
            },
        }},
        "outcomes": {"type": "object",
                     "description": "the answer of /api/callStats without parameters"},
        "outcome_totals": {"type": "object", "description": "today's calls by final status",
                           "properties": {**{s: _INT for s in FINALS}, "total": _INT}},
        "webhooks": {"type": ["object", "null"],
                     "description": "the outbox as /metrics shows it (null: unreadable)",
                     "properties": {"backlog": _INT,
                                    "oldest_age_s": {"type": "number", "minimum": 0},
                                    "given_up": _INT}},
    },
}  # fmt: skip

DASHBOARD = p.Operation(
    methods=("GET",),
    path="/api/dashboard",
    summary="The supervisor's dashboard snapshot",
    description=(
        "What /static/dashboard.html shows: operators (as /api/sipList, with what each is "
        "doing), the calls in progress (as current_calls), today's outcomes per hour (as "
        "/api/callStats) and the webhook backlog (as /metrics). See docs/dashboard.md."
    ),
    tag="dashboard",
    answers=(p.Answer(200, "the snapshot", _SNAPSHOT),),
    errors=(401,),
)
SUPERVISOR_TOKEN = p.Operation(
    methods=("POST",),
    path="/api/supervisorToken",
    summary="A supervisor token for the live dashboard",
    description=(
        "A client_id for /static/dashboard.html: it sees every extension's calls over the "
        "WebSocket until `expires`, and can neither place nor transfer calls. "
        "See docs/dashboard.md."
    ),
    tag="dashboard",
    params=(
        p.whole_number("ttl", "seconds the token is valid", tokens.MIN_TTL,
                       tokens.SUPERVISOR_MAX_TTL, default=tokens.MAX_TTL),
    ),
    answers=(
        p.Answer(200, "the token", {
            "type": "object",
            "required": ["client_id", "expires"],
            "properties": {
                "client_id": {"type": "string", "description": "the dashboard's token"},
                "expires": {"type": "integer", "description": "unix time the token expires"},
            },
        }),
    ),
    errors=(400, 401, 409),
    notes={409: "tokens are disabled ([websocket] token_secret is empty)"},
)  # fmt: skip
#: Every route of this module.
OPERATIONS = (DASHBOARD, SUPERVISOR_TOKEN)


class DashboardEndpoints:
    """``GET /api/dashboard`` and ``POST /api/supervisorToken``.

    :param dashboard: the :class:`Dashboard`
    :param token_secret: ``[websocket] token_secret`` (empty: no tokens, 409)
    :param clock: an ``IReactorTime`` (the token's ``expires`` counts from it)
    """

    def __init__(self, dashboard: Dashboard, token_secret: str, *, clock: Any):
        self._dashboard = dashboard
        self._secret = token_secret
        self._clock = clock

    def add_routes(self, router: Router) -> None:
        """Register this module's routes."""
        p.add_route(router, DASHBOARD, self.snapshot)
        p.add_route(router, SUPERVISOR_TOKEN, self.supervisor_token)

    async def snapshot(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/dashboard``: the snapshot the page shows."""
        return await self._dashboard.snapshot()

    async def supervisor_token(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/supervisorToken``: a supervisor token valid ``ttl`` seconds."""
        if not self._secret:
            raise Conflict(
                "supervisor tokens are disabled: [websocket] token_secret is not set",
                code="widget_tokens_disabled",
            )
        client_id, expires = tokens.issue_supervisor(self._secret, args["ttl"],
                                                     self._clock.seconds())  # fmt: skip
        return {"client_id": client_id, "expires": expires}

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        return paths(OPERATIONS)
