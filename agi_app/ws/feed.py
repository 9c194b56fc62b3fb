"""Widget events (seed 000) from the call tracker's leg events.

==========================================  =================================
leg of the widget user's extension          widget event
==========================================  =================================
ringing, direction ``in``, nobody else      type 2, incoming call to the
in the call talking yet                     manager: ``callID, from, to``
ringing, direction ``in``, the call was     type 1, incoming transfer
answered by someone else before             request: ``callID, from, to``
                                            (types 1 and 2 also ``name``,
                                            ``crm_url`` of a caller the
                                            CRM lookup found)
hungup                                      type 3, finished call: ``callID,
                                            from, to, start, end, duration,
                                            direction, record``
==========================================  =================================

``callID`` is the call's ``call_api_id`` (the id ``transfer()`` takes; for
calls agi_app placed it is the ``call_id``/``generalCallID``).  ``start``
and ``end`` are unix timestamps (seconds), ``duration`` whole seconds of
conversation, ``direction`` 0 incoming, 1 outgoing, ``record`` the link to
the recording or null.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["TYPE_FINISHED", "TYPE_INCOMING", "TYPE_TRANSFER", "widget_event"]

TYPE_TRANSFER = 1
TYPE_INCOMING = 2
TYPE_FINISHED = 3


def _timestamp(gmt: str | None) -> int | None:
    if not gmt:
        return None
    try:
        return int(datetime.strptime(gmt, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None


def widget_event(
    event: Any,
    *,
    answered_elsewhere: bool = False,
    record_url: str | None = None,
    name: str | None = None,
    crm_url: str | None = None,
) -> dict[str, Any] | None:
    """The widget event of a tracker :class:`~agi_app.live.tracker.CallEvent` for
    the widgets of ``event.extension``, or None.

    ``answered_elsewhere``: another leg of the call was already talking
    when this one started ringing (a transfer).  ``record_url``: the
    recording link of a finished call.  ``name``, ``crm_url``: what the CRM
    said of the caller of an inbound call (:mod:`agi_app.inbound`), added
    to the incoming-call events when known."""
    if not event.extension:
        return None
    call = event.call or {}
    caller = call.get("caller_id_number")
    called = call.get("called_number")
    if event.kind == "ringing" and event.direction == "in":
        incoming = {
            "type": TYPE_TRANSFER if answered_elsewhere else TYPE_INCOMING,
            "callID": event.call_api_id,
            "from": caller,
            "to": called or event.extension,
        }
        if name:
            incoming["name"] = name
        if crm_url:
            incoming["crm_url"] = crm_url
        return incoming
    if event.kind == "hungup":
        end = int(event.time)
        duration = int(round(event.duration or 0))
        start = _timestamp(call.get("init_time_gmt"))
        if start is None or start > end:
            start = end - duration
        outgoing = event.direction == "out"
        return {
            "type": TYPE_FINISHED,
            "callID": event.call_api_id,
            "from": caller or (event.extension if outgoing else None),
            "to": called or (None if outgoing else event.extension),
            "start": start,
            "end": end,
            "duration": duration,
            "direction": 1 if outgoing else 0,
            "record": record_url,
        }
    return None
