"""Everything of events and widgets, built from the configuration, for
:class:`agi_app.app.Application` to hold as one part.

:class:`EventParts` builds the event service with its treq sender, the event
generator on the call tracker, the widget hub with its WebSocket listener on
``[websocket] listen`` and the HTTP endpoints of ``/extension/{id}/event/``
and ``/extension/{id}/callback/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from agi_app.events.delivery import DeliverySettings, TreqSender
from agi_app.events.generator import CallInfo, EventGenerator
from agi_app.events.service import EventService

__all__ = ["EventParts", "settings_from_config"]

log = Logger(namespace="agi_app.events")


def settings_from_config(config: Any) -> DeliverySettings:
    """The delivery settings of the ``[events]`` section, where the
    configuration has one (keys named as :class:`DeliverySettings` fields);
    the defaults otherwise."""
    section = getattr(config, "events", None)
    if section is None:
        return DeliverySettings()
    names = {f.name for f in dataclasses.fields(DeliverySettings)}
    return DeliverySettings(**{n: getattr(section, n) for n in names if hasattr(section, n)})


class EventParts:
    """Webhooks and the widget feed of one application.

    :param config: the whole :class:`~agi_app.config.Config`
    :param store: the store (an :class:`~agi_app.events.store.EventStore` too)
    :param calls: the :class:`~agi_app.calls.service.CallService`
    :param tracker: the :class:`~agi_app.tracker.CallTracker`
    :param control: call control for the widget's ``transfer()`` (or None)
    :param settings: delivery settings (default: from ``config``)
    """

    def __init__(
        self,
        config: Any,
        *,
        store: Any,
        calls: Any,
        tracker: Any,
        reactor: Any,
        control: Any = None,
        settings: DeliverySettings | None = None,
    ):
        from agi_app.web.extensions_events import ExtensionEventEndpoints
        from agi_app.ws.server import WidgetHub

        self.config = config
        self.reactor = reactor
        settings = settings or settings_from_config(config)
        self.info = CallInfo(store, public_url=config.http.public_url)
        self.sender = TreqSender(reactor, timeout=settings.timeout)
        self.service = EventService(store, send=self.sender, clock=reactor, settings=settings)
        self.generator = EventGenerator(tracker, self.service, self.info)
        self.hub = WidgetHub(
            client_ids=config.websocket.client_ids,
            tracker=tracker,
            calls=calls,
            control=control,
            info=self.info,
            default_trunk=config.dialing.default_trunk,
            call_time_to_ext=config.dialing.call_time_to_ext,
        )
        self.endpoints = ExtensionEventEndpoints(
            self.service,
            calls,
            default_trunk=config.dialing.default_trunk,
            call_time_to_ext=config.dialing.call_time_to_ext,
        )
        self.ws_port: Any = None

    def add_routes(self, router: Any) -> None:
        """The HTTP routes of events and callbacks."""
        self.endpoints.add_routes(router)

    async def start(self) -> None:
        """Resume deliveries, follow the tracker, listen for widgets.
        The store must be open."""
        from agi_app.ws.server import WidgetFactory

        await self.service.start()
        self.generator.start()
        self.hub.start()
        endpoint = serverFromString(self.reactor, self.config.websocket.listen)
        self.ws_port = await endpoint.listen(WidgetFactory(self.hub, reactor=self.reactor))
        log.info("widget WebSocket on {listen}", listen=self.config.websocket.listen)

    async def stop(self) -> None:
        """Close the widgets, stop listening and delivering (the outbox keeps
        what is undelivered)."""
        self.hub.stop()
        if self.ws_port is not None:
            await defer.maybeDeferred(self.ws_port.stopListening)
            self.ws_port = None
        self.generator.stop()
        self.service.stop()
        await self.sender.close()
