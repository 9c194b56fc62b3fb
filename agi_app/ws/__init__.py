"""The browser widget's WebSocket feed (CONTRACT sections 7 and 8).

:mod:`agi_app.ws.feed` turns the call tracker's events into widget events;
:mod:`agi_app.ws.server` is the autobahn server speaking the JSON wire
protocol of ``docs/widget.md`` and the hub that routes events to the
widgets of the extensions taking part in a call; :mod:`agi_app.ws.tokens`
mints and checks the widget tokens that bind a widget to one extension;
:mod:`agi_app.ws.origins` decides which pages may connect.
"""

from agi_app.ws.feed import widget_event
from agi_app.ws.origins import OriginPolicy
from agi_app.ws.server import (
    CLOSE_BAD_CLIENT_ID,
    CLOSE_NO_HELLO,
    CLOSE_OTHER_EXTENSION,
    CLOSE_TOKEN_EXPIRED,
    WidgetFactory,
    WidgetHub,
    WidgetProtocol,
)

__all__ = [
    "CLOSE_BAD_CLIENT_ID",
    "CLOSE_NO_HELLO",
    "CLOSE_OTHER_EXTENSION",
    "CLOSE_TOKEN_EXPIRED",
    "OriginPolicy",
    "WidgetFactory",
    "WidgetHub",
    "WidgetProtocol",
    "widget_event",
]
