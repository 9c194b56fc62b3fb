"""Call-centre statistics from the call log.

- ``/api/operatorStats``: per operator, the calls offered (their phone rang),
  answered and missed, the answer rate, the average ring and talk times and
  the talk time in all, over a range of time;
- ``/api/callStats``: the calls that began in each hour (or day) of a range,
  by final status.

``from`` and ``to`` are UTC dates (``2026-12-06``, both included) or ISO
times (``2026-12-06T10:00Z``, ``2026-12-06T13:00+03:00``; without a zone:
UTC).  The store keeps the figures per hour, so a time is taken at hour
precision: ``from`` from the start of its hour, ``to`` to the end of its
hour.  The answer says the range covered as ``from`` (included) and ``to``
(excluded).  Without ``from``: today (UTC) from midnight; without ``to``:
up to the end of the current hour.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from agi_app import validation as v
from agi_app.calls import statuses as st
from agi_app.store import Store
from agi_app.times import iso_time
from agi_app.validation import InvalidInput
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, Router
from agi_app.web.openapi import paths, ref
from agi_app.web.params import Answer, Operation, Param

__all__ = ["OPERATIONS", "StatsEndpoints", "TimeBound", "operator_figures"]

#: the longest range of operatorStats and of callStats by day, days
MAX_DAYS = 366
#: the longest range of callStats by hour, days
MAX_HOUR_DAYS = 31

_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
#: a UTC date, or an ISO 8601 time (minutes at least; a zone or none)
TIME_BOUND = v.Rule(
    "[0-9]{4}-[0-9]{2}-[0-9]{2}"
    "(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.][0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?",
    "a date (YYYY-MM-DD) or an ISO time (YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM])",
)


class TimeBound:
    """A checked ``from``/``to``: a whole UTC date, or a moment."""

    __slots__ = ("date", "moment")

    def __init__(self, moment: datetime, date: bool):
        self.moment = moment
        self.date = date

    def start(self) -> datetime:
        """As the start of a range: its day, or the start of its hour."""
        return self.moment.replace(minute=0, second=0, microsecond=0)

    def end(self) -> datetime:
        """As the end of a range (excluded): the day after a date, the end
        of a time's hour."""
        if self.date:
            return self.moment + _DAY
        hour = self.start()
        return hour if hour == self.moment else hour + _HOUR


def time_bound(value: Any, field: str) -> TimeBound:
    """A :class:`TimeBound` from ``2026-12-06`` or an ISO time."""
    if not isinstance(value, str) or not TIME_BOUND.match(value):
        raise InvalidInput(field, f"{field} must be {TIME_BOUND.says}")
    text = value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, f"{field} is not a real date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if not 2000 <= moment.year <= 9998:
        raise InvalidInput(field, f"{field} must be between the years 2000 and 9998")
    return TimeBound(moment, date="T" not in text)


def _time_param(name: str, doc: str) -> Param:
    return Param(name, time_bound, TIME_BOUND.schema(), doc)


def operator_figures(row: dict[str, Any]) -> dict[str, Any]:
    """The answer's figures of one operator from the store's sums
    (:meth:`agi_app.store.Store.operator_stats`)."""
    offered, answered, talked = row["offered"], row["answered"], row["talked"]
    return {
        "sip": row["sip"],
        "offered": offered,
        "answered": answered,
        "missed": offered - answered,
        "answer_rate": round(answered / offered, 3) if offered else None,
        "avg_ring_s": round(row["ring_ms"] / answered / 1000, 1) if answered else None,
        "avg_talk_s": round(row["talk_ms"] / talked / 1000, 1) if talked else None,
        "talk_s": round(row["talk_ms"] / 1000, 1),
        "talked": talked,
    }


class StatsEndpoints:
    """The statistics routes over a :class:`~agi_app.store.Store`.

    :param clock: an ``IReactorTime`` (the default range ends now)
    """

    def __init__(self, store: Store, *, clock: Any):
        self._store = store
        self._clock = clock

    def add_routes(self, router: Router) -> None:
        """Register ``/api/operatorStats`` and ``/api/callStats``."""
        p.add_route(router, OPERATOR_STATS, self.operator_stats)
        p.add_route(router, CALL_STATS, self.call_stats)

    def _range(self, args: dict[str, Any], max_days: int) -> tuple[datetime, datetime]:
        now = datetime.fromtimestamp(math.floor(self._clock.seconds()), UTC)
        start = args["from"].start() if args["from"] else now.replace(
            hour=0, minute=0, second=0, microsecond=0)  # fmt: skip
        end = args["to"].end() if args["to"] else TimeBound(now, date=False).end()
        given = args["from"] and args["to"] and args["to"].moment < args["from"].moment
        if given or end < start:
            raise InvalidInput("to", "to must not be before from")
        if end - start > timedelta(days=max_days):
            raise InvalidInput("to", f"the range may be at most {max_days} days")
        return start, end

    async def operator_stats(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/operatorStats``: the figures of each operator over the range."""
        start, end = self._range(args, MAX_DAYS)
        rows = await self._store.operator_stats(_iso(start), _iso(end), args["sip"])
        return {"from": _iso(start), "to": _iso(end),
                "operators": [operator_figures(r) for r in rows]}  # fmt: skip

    async def call_stats(self, req: ApiRequest, args: dict[str, Any]) -> dict[str, Any]:
        """``/api/callStats``: calls per hour (or day) by final status."""
        by = args["by"]
        if by == "day":
            start, end = self._range(args, MAX_DAYS)
            # whole days: a day's count is kept per day
            start = start.replace(hour=0)
            if end.hour:
                end = end.replace(hour=0) + _DAY
        else:
            start, end = self._range(args, MAX_HOUR_DAYS)
        found = await self._store.call_outcomes(_iso(start), _iso(end), by)
        items = []
        for period in found:
            counts = {s: period["counts"].get(s, 0) for s in _FINALS}
            when = period["period"]
            label = f"{when}:00:00.000Z" if by == "hour" else when
            items.append({by: label, **counts, "total": sum(counts.values())})
        return {"from": _iso(start), "to": _iso(end), "by": by, f"{by}s": items}

    @staticmethod
    def openapi_paths() -> dict[str, Any]:
        """The OpenAPI path items of these routes."""
        return paths(OPERATIONS)

    @staticmethod
    def openapi_schemas() -> dict[str, Any]:
        """Component schemas of these routes."""
        return {"OperatorFigures": _OPERATOR_FIGURES}


def _iso(moment: datetime) -> str:
    return iso_time(moment.timestamp())


#: the final statuses in the order of the contract
_FINALS = tuple(s for s in st.STATUSES if s in st.FINAL_STATUSES)

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_OPERATOR_FIGURES = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sip", "offered", "answered", "missed", "answer_rate", "avg_ring_s",
                 "avg_talk_s", "talk_s", "talked"],
    "properties": {
        "sip": {"type": "string"},
        "offered": {"type": "integer", "minimum": 0,
                    "description": "calls that rang the operator (OPERATOR_CALLTO)"},
        "answered": {"type": "integer", "minimum": 0,
                     "description": "of those, answered by the operator (OPERATOR_PICKUP)"},
        "missed": {"type": "integer", "minimum": 0, "description": "offered - answered"},
        "answer_rate": {**_NULLABLE_NUMBER, "description": "answered / offered (null: none)"},
        "avg_ring_s": {**_NULLABLE_NUMBER,
                       "description": "seconds from ringing to answer, on average"},
        "avg_talk_s": {**_NULLABLE_NUMBER, "description": "seconds of conversation, on average"},
        "talk_s": {"type": "number", "minimum": 0, "description": "seconds of conversation"},
        "talked": {"type": "integer", "minimum": 0,
                   "description": "answered calls that ended in a conversation (FINISH)"},
    },
}  # fmt: skip
_FROM = _time_param("from", "start of the range: a UTC date (included) or an ISO time "
                            "(from the start of its hour); default today 00:00 UTC")  # fmt: skip
_TO = _time_param("to", "end of the range: a UTC date (included) or an ISO time (to the end "
                        "of its hour); default the end of the current hour")  # fmt: skip
_RANGE = {
    "from": {**ref("Time"), "description": "the start of the range covered (included)"},
    "to": {**ref("Time"), "description": "the end of the range covered (excluded)"},
}

OPERATOR_STATS = Operation(
    methods=("GET", "POST"),
    path="/api/operatorStats",
    summary="Operator statistics over a range of time",
    description=(
        "Per operator (ordered by sip), the operator-first calls and the incoming calls "
        "connected to an extension whose operator was rung in the range (UTC, at hour "
        f"precision; at most {MAX_DAYS} days): offered, answered, missed, answer_rate, "
        "avg_ring_s, avg_talk_s, talk_s. Operators without calls in the range are left out."
    ),
    tag="statistics",
    params=(_FROM, _TO, p.extension("sip", "only this operator")),
    answers=(Answer(200, "success", {
        "type": "object",
        "additionalProperties": False,
        "required": ["from", "to", "operators"],
        "properties": {**_RANGE,
                       "operators": {"type": "array", "items": ref("OperatorFigures")}},
    }),),
)  # fmt: skip
CALL_STATS = Operation(
    methods=("GET", "POST"),
    path="/api/callStats",
    summary="Calls per hour or day by final status",
    description=(
        "The calls that began in each hour (by=hour, the default; at most "
        f"{MAX_HOUR_DAYS} days) or day (by=day, whole UTC days; at most {MAX_DAYS} days) "
        "of the range and have ended, counted by final status, with their total. Periods "
        "without calls are left out. The list is under hours (or days)."
    ),
    tag="statistics",
    params=(_FROM, _TO, p.choice("by", "hour or day", ("hour", "day"), default="hour")),
    answers=(Answer(200, "success", {
        "type": "object",
        "additionalProperties": False,
        "required": ["from", "to", "by"],
        "properties": {
            **_RANGE,
            "by": {"enum": ["hour", "day"]},
            **{key: {"type": "array", "items": {
                "type": "object",
                "required": [key[:-1], *_FINALS, "total"],
                "properties": {
                    key[:-1]: {"type": "string",
                               "description": "the hour (a Time) or the day (YYYY-MM-DD)"},
                    **{s: {"type": "integer", "minimum": 0} for s in _FINALS},
                    "total": {"type": "integer", "minimum": 0},
                },
            }} for key in ("hours", "days")},
        },
    }),),
)  # fmt: skip
#: Every route of this module.
OPERATIONS = (OPERATOR_STATS, CALL_STATS)
