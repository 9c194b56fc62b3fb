"""The browser widget's WebSocket feed (CONTRACT section 7, seed 000).

:mod:`agi_app.ws.feed` turns the call tracker's events into widget events;
:mod:`agi_app.ws.server` is the autobahn server speaking the JSON wire
protocol of ``docs/widget.md`` and the hub that routes events to the
widgets of the extensions taking part in a call.
"""

from agi_app.ws.feed import widget_event
from agi_app.ws.server import (
    CLOSE_BAD_CLIENT_ID,
    CLOSE_NO_HELLO,
    WidgetFactory,
    WidgetHub,
    WidgetProtocol,
)

__all__ = [
    "CLOSE_BAD_CLIENT_ID",
    "CLOSE_NO_HELLO",
    "WidgetFactory",
    "WidgetHub",
    "WidgetProtocol",
    "widget_event",
]
