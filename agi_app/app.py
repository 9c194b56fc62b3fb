"""Wiring: one :class:`Application` builds every part from a :class:`Config`
and runs them on one reactor.

Layers, bottom up: the store and the PBX link (:class:`AMIService`); the
services that hold the rules (:class:`CallService`, :class:`OperatorTracker`);
the FastAGI scripts and the HTTP resources on top.  Nothing here is
module-level state: a process could hold several applications, and one
application is meant to grow several PBX links.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from agi_app import __version__
from agi_app.agi import ScriptRegistry
from agi_app.agi import listen as agi_listen
from agi_app.calls.callback import AutoCallback
from agi_app.calls.missed import MissedCalls
from agi_app.cluster import ClusterNode, LifecycleDuty, StartStopDuty
from agi_app.config import Config
from agi_app.doctor import register_scripts as register_doctor_scripts
from agi_app.events.delivery import DeliverySettings, TreqSender
from agi_app.events.generator import CallInfo, EventGenerator
from agi_app.events.service import EventService
from agi_app.inbound import CRMLookup
from agi_app.links import RecordLinks, link_secret
from agi_app.live.control import handed_over
from agi_app.logs import service_log_observer
from agi_app.memory import HeapTrimmer
from agi_app.metrics import Metrics, WebhookBacklog
from agi_app.netguard import TargetGuard
from agi_app.pbxs import (
    PBX,
    AllTrackers,
    PBXCalls,
    PBXControl,
    PBXDirectory,
    pbx_health,
    route_scripts,
    transferred,
)
from agi_app.retention import Erasure, Retention
from agi_app.store import store_from_config
from agi_app.web import extensions_events, openapi
from agi_app.web import history as history_module
from agi_app.web.api import Router
from agi_app.web.calls import CallEndpoints
from agi_app.web.calls_control import CallControlEndpoints
from agi_app.web.dashboard import Dashboard, DashboardEndpoints
from agi_app.web.erasure import ErasureEndpoints
from agi_app.web.extensions import CurrentCallsEndpoints
from agi_app.web.extensions_events import ExtensionEventEndpoints
from agi_app.web.history import HistoryEndpoints
from agi_app.web.missed import MissedCallEndpoints
from agi_app.web.site import build_site
from agi_app.web.stats import StatsEndpoints
from agi_app.web.widget import WidgetTokenEndpoints
from agi_app.ws import OriginPolicy, WidgetFactory, WidgetHub

__all__ = ["Application", "EventParts", "freeze_startup_objects", "run", "settings_from_config"]

log = Logger(namespace="agi_app")


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
    :param tracker: the :class:`~agi_app.live.tracker.CallTracker` (of the
        default PBX: the widget's)
    :param more_trackers: the trackers of the further PBXs (their webhooks)
    :param widget_tracker: what the widgets follow (default: ``tracker``)
    :param control: call control for the widget's ``transfer()`` (or None)
    :param settings: delivery settings (default: from ``config``)
    :param record_link: the signed link of a recording (``RecordURL`` of
        ``record`` events); None: no ``record`` events
    :param dashboard: the supervisor dashboard's snapshot (an async
        function) the widget hub sends to supervisor connections
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
        record_link: Any = None,
        dashboard: Any = None,
        more_trackers: Any = (),
        widget_tracker: Any = None,
    ):
        self.config = config
        self.reactor = reactor
        settings = settings or settings_from_config(config)
        self.info = CallInfo(store, public_url=config.http.public_url)
        # Webhook targets: public addresses, [events] allowed_networks, never our own ports.
        self.guard = TargetGuard.from_config(config)
        self.sender = TreqSender(reactor, timeout=settings.timeout, guard=self.guard)
        self.service = EventService(
            store, send=self.sender, clock=reactor, settings=settings, guard=self.guard
        )
        # One generator per PBX (each follows its own tracker), one outbox.
        self.generators = [
            EventGenerator(t, self.service, self.info, record_link, handed_over=handed_over)
            for t in (tracker, *more_trackers)
        ]
        self.generator = self.generators[0]
        self.hub = WidgetHub(
            client_ids=config.websocket.client_ids,
            token_secret=config.websocket.token_secret,
            clock=reactor,
            tracker=widget_tracker or tracker,
            calls=calls,
            control=control,
            info=self.info,
            default_trunk=config.dialing.default_trunk,
            call_time_to_ext=config.dialing.call_time_to_ext,
            dashboard=dashboard,
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
        await self.service.start()
        for generator in self.generators:
            generator.start()
        self.hub.start()
        endpoint = serverFromString(self.reactor, self.config.websocket.listen)
        origins = OriginPolicy.from_config(self.config)
        factory = WidgetFactory(self.hub, reactor=self.reactor, origins=origins)
        self.ws_port = await endpoint.listen(factory)
        log.info("widget WebSocket on {listen} for {origins}",
                 listen=self.config.websocket.listen, origins=origins.describe())  # fmt: skip

    async def stop(self) -> None:
        """Close the widgets, stop listening and delivering (the outbox keeps
        what is undelivered)."""
        self.hub.stop()
        if self.ws_port is not None:
            await defer.maybeDeferred(self.ws_port.stopListening)
            self.ws_port = None
        for generator in self.generators:
            generator.stop()
        self.service.stop()
        await self.sender.close()


class Application:
    """Every part of agi_app, built from ``config`` on ``reactor``."""

    def __init__(self, config: Config, reactor: Any):
        self.config = config
        self.reactor = reactor
        # SQLite at [store] path, or PostgreSQL when [store] url is set.
        self.store = store_from_config(config, reactor)
        # Inbound calls: the caller looked up in the CRM ([crm]), through
        # the webhooks' SSRF guard (shared by every PBX).
        self.crm = CRMLookup.from_config(config, reactor)
        # One PBX per [ami] (named "default") and [ami:NAME] section, each
        # with its own AMI link, lifecycle (reconciled after that link's own
        # logins), call services, tracker, call control and operator states.
        # Per-PBX leadership between several nodes would wrap each PBX's
        # start and stop (PBX.start/PBX.stop) here.
        self.pbxs = PBXDirectory(
            [
                PBX(name, section, config, store=self.store, reactor=reactor,
                    lookup=self.crm, on_transfer=transferred)
                for name, section in config.pbxs.items()
            ],
            store=self.store, clock=reactor,
        )  # fmt: skip
        default = self.pbxs.default
        # The default PBX's parts under their single-PBX names.
        self.ami = default.ami
        self.lifecycle = default.lifecycle
        self.tracker = default.tracker
        self.operators = default.operators
        self.ivr = default.ivr
        self.outbound = default.outbound
        self.inbound = default.inbound
        # What the API and the widget use: calls go to the PBX of the
        # extension (or pbx=), call control to the PBX that has the call.
        self.calls = PBXCalls(self.pbxs)
        self.control = PBXControl(self.pbxs) if len(self.pbxs) > 1 else default.control
        # One FastAGI listener for every PBX's dialplan: each session runs
        # the script of the PBX its channel is on.
        self.scripts = ScriptRegistry()
        route_scripts(self.pbxs, self.scripts)
        # agi-app doctor's FastAGI check (dialplan [agi-app-doctor])
        register_doctor_scripts(self.scripts)
        # Recording links that work without an API key for a while.
        secret, self.link_secret_source = link_secret(
            config.http.link_secret, config.http.api_keys
        )
        self.links = RecordLinks(
            secret, public_url=config.http.public_url, ttl=config.http.record_link_ttl,
            clock=reactor,
        )  # fmt: skip
        # The supervisor's live dashboard: its figures read where the API
        # reads them (sipList, current calls, callStats, the webhook backlog).
        self.dashboard = Dashboard(
            self.store, self.tracker, backlog=WebhookBacklog(self.store, reactor), clock=reactor,
            more_trackers=[p.tracker for p in self.pbxs if p is not default],
        )  # fmt: skip
        # Webhooks to CRMs and the browser widget's feed.
        self.events = EventParts(
            config, store=self.store, calls=self.calls, tracker=self.tracker,
            control=self.control, reactor=reactor, record_link=self.links.url,
            dashboard=self.dashboard.snapshot,
            more_trackers=[p.tracker for p in self.pbxs if p is not default],
            widget_tracker=AllTrackers(self.pbxs) if len(self.pbxs) > 1 else None,
        )  # fmt: skip
        for pbx, generator in zip(self.pbxs, self.events.generators, strict=True):
            pbx.lifecycle.recorder.on_complete(generator.recording_complete)
            # The dashboard is sent again a moment after a status or an
            # operator's state changes (call events reach the hub anyway).
            pbx.lifecycle.on_status.append(self.events.hub.dashboard_changed)
            pbx.ami.subscribe(self.events.hub.dashboard_changed, "DeviceStateChange")
        # Old history and recordings go; a subject's data goes on request.
        run_blocking = _in_threads(reactor)
        #: the C heap's free pages handed back to the system every minute
        self.heap = HeapTrimmer(reactor)
        retention = config.retention
        self.retention = Retention(
            self.store, clock=reactor, run_blocking=run_blocking,
            history_days=retention.history_days, recordings_days=retention.recordings_days,
            interval=retention.interval, batch_size=retention.batch_size,
        )  # fmt: skip
        self.erasure = Erasure(
            self.store, events=self.events.service, run_blocking=run_blocking,
            hash_key=secret, batch_size=retention.batch_size,
        )  # fmt: skip
        # Inbound calls nobody answered, and calling those callers back.
        # Inbound calls nobody answered, and calling those callers back: on
        # each PBX, through its own operators.
        self.missed_calls: list[MissedCalls] = []
        self.auto_callbacks: list[AutoCallback] = []
        for pbx in self.pbxs:
            self._missed_calls_of(pbx)
        self.missed = self.missed_calls[0]
        self.callbacks = self.auto_callbacks[0] if self.auto_callbacks else None
        self._ports: list = []
        self.agi_factory = None
        # GET /metrics: counted as it happens (statuses, HTTP answers), the
        # rest read from the parts when scraped.
        self.metrics = Metrics(
            clock=reactor, store=self.store, amis=lambda: [p.ami for p in self.pbxs],
            pbxs=list(self.pbxs.pbxs),
            agi=lambda: self.agi_factory, widgets=self.events.hub,
        )  # fmt: skip
        for pbx, generator in zip(self.pbxs, self.events.generators, strict=True):
            pbx.lifecycle.on_status.append(self.metrics.status_logged)
            # the hangup webhook of a call that ended while nobody watched
            pbx.lifecycle.on_status.append(generator.status_logged)
        # Several nodes on one PostgreSQL store: each webhook delivered by one
        # node at a time, and one node per PBX applying what its AMI events
        # say (agi_app.cluster, docs/scaling.md).
        self.node: ClusterNode | None = None
        if config.store.url:
            self.node = ClusterNode(
                config.store.url, reactor=reactor, name=config.node.effective_name,
                events=self.events.service, store=self.store,
            )  # fmt: skip
            callbacks = self.auto_callbacks or [None] * len(self.missed_calls)
            for pbx, generator, missed, callback in zip(
                self.pbxs, self.events.generators, self.missed_calls, callbacks, strict=True
            ):
                duties = [
                    StartStopDuty(pbx.operators, resync=pbx.operators.resync),
                    StartStopDuty(missed),
                    StartStopDuty(generator),
                    LifecycleDuty(pbx.lifecycle, reactor),
                ]
                if callback is not None:
                    duties.append(StartStopDuty(callback))
                self.node.lead_pbx(pbx.lifecycle.pbx, duties)

    def _missed_calls_of(self, pbx: PBX) -> None:
        inbound, dialing = self.config.inbound, self.config.dialing
        callbacks = None
        if inbound.auto_callback:
            callbacks = AutoCallback(
                calls=pbx.calls, group=inbound.group, hours=inbound.working_hours,
                trunk=dialing.default_trunk, ring=dialing.call_time_to_ext,
                attempts=inbound.callback_attempts, retry_delay=inbound.callback_retry_delay,
                max_age=inbound.callback_max_age, device=dialing.operator_channel,
                pbx=pbx.name,
            )  # fmt: skip
            self.auto_callbacks.append(callbacks)
        self.missed_calls.append(MissedCalls(
            tracker=pbx.tracker, store=self.store, clock=self.reactor,
            events=self.events.service, group=inbound.group, pbx=pbx.name,
            on_missed=callbacks.poke if callbacks is not None else None,
        ))  # fmt: skip

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, body)`` for ``GET /health``: ok while every PBX's AMI
        session is logged in (``ami``: the default PBX's; ``pbxs``: each).
        A request without an API key sees only ``status`` (:meth:`router`)."""
        ami_up = all(p.ami.connected for p in self.pbxs)
        factory = self.agi_factory
        body = {
            "status": "ok" if ami_up else "degraded",
            "version": __version__,
            "ami": {
                "connected": bool(self.ami.connected),
                "host": self.config.ami.host,
                "port": self.config.ami.port,
                "channels": len(self.ami.channels),
            },
            "fastagi": {
                "listening": factory is not None,
                "active_sessions": factory.active if factory is not None else 0,
                "sessions": factory.total if factory is not None else 0,
            },
            "store": {"path": self.config.store.path, "open": self.store_open},
            "pbxs": pbx_health(self.pbxs),
        }
        if self.node is not None:
            body["node"] = self.node.describe()
        return ami_up, body

    @property
    def store_open(self) -> bool:
        return getattr(self.store, "is_open", True)

    def _history(self) -> HistoryEndpoints:
        return HistoryEndpoints(
            self.store, public_url=self.config.http.public_url, links=self.links
        )

    def router(self) -> Router:
        """Every HTTP route of the application, with the OpenAPI document."""
        router = Router()
        history = self._history()
        history.add_routes(router)
        calls = CallEndpoints(
            self.calls,
            default_trunk=self.config.dialing.default_trunk,
            trunks=self.config.dialing.all_trunks,
            call_time_to_ext=self.config.dialing.call_time_to_ext,
            health=self.health,
            clock=self.reactor,
        )
        calls.add_routes(router)
        # Anyone may ask whether the service is up; where it keeps its store
        # and which PBX it talks to are for key holders (CONTRACT 8).
        router.public_fields("/health", ("status",))
        current = CurrentCallsEndpoints(self.control)
        current.add_routes(router)
        control = CallControlEndpoints(self.control, self.outbound)
        control.add_routes(router)
        self.events.add_routes(router)
        widget = WidgetTokenEndpoints(self.config.websocket.token_secret, clock=self.reactor)
        widget.add_routes(router)
        self.metrics.add_routes(router, open_access=self.config.metrics.open)
        missed = MissedCallEndpoints(self.store)
        missed.add_routes(router)
        stats = StatsEndpoints(self.store, clock=self.reactor)
        stats.add_routes(router)
        erasure = ErasureEndpoints(self.erasure)
        erasure.add_routes(router)
        dashboard = DashboardEndpoints(
            self.dashboard, self.config.websocket.token_secret, clock=self.reactor
        )
        dashboard.add_routes(router)
        parts = [history_module, calls, current, control, extensions_events, widget, missed,
                 stats, erasure, dashboard, self.metrics]  # fmt: skip
        openapi.add_routes(router, openapi.build_document(parts))
        return router

    def signed_router(self) -> Router:
        """The routes a signed link reaches without an API key."""
        router = Router()
        self._history().add_signed_routes(router)
        return router

    def site(self):
        """The HTTP site: the CRM API, records, static files, health."""
        return build_site(
            self.router(), api_keys=self.config.http.api_keys, clock=self.reactor,
            signed=self.signed_router(), observe=self.metrics.observe_request,
        )  # fmt: skip

    async def start(self) -> None:
        """Open the store, start the PBX link, listen on every port."""
        folder = os.path.dirname(os.path.abspath(self.config.store.path))
        os.makedirs(folder, exist_ok=True)
        self.store.open()
        if self.node is not None:
            self.node.open()
        for missed in self.missed_calls:
            missed.start()
        await self.events.start()
        for callbacks in self.auto_callbacks:
            callbacks.start()
        log.info("signed recording links: key {source}, valid {ttl} s",
                 source=self.link_secret_source, ttl=self.links.ttl)  # fmt: skip
        self.retention.start()
        self.heap.start()
        for pbx in self.pbxs:
            pbx.start()
        # (after the parts started: a node that does not lead a PBX stops
        # that PBX's duties once its lock attempt answers)
        if self.node is not None:
            self.node.start()
        port = await agi_listen(self.reactor, self.config.agi, self.scripts)
        self.agi_factory = port.factory
        self._ports.append(port)
        http = serverFromString(self.reactor, self.config.http.listen)
        self._ports.append(await http.listen(self.site()))
        log.info(
            "agi_app {version}: FastAGI on {agi}, HTTP on {http}, AMI {pbxs}",
            version=__version__,
            agi=self.config.agi.listen,
            http=self.config.http.listen,
            pbxs=", ".join(f"{p.name} {p.config.host}:{p.config.port}" for p in self.pbxs),
        )

    async def stop(self) -> None:
        """Stop listening, drop the PBX link, close the store."""
        for port in self._ports:
            await defer.maybeDeferred(port.stopListening)
        self._ports.clear()
        self.retention.stop()
        self.heap.stop()
        if self.node is not None:
            await self.node.stop()
        await self.events.stop()
        await self.crm.close()
        for callbacks in self.auto_callbacks:
            callbacks.stop()
        for missed in self.missed_calls:
            missed.stop()
        for pbx in self.pbxs:
            await pbx.stop()
        await self.store.close()


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, classes, the application's
    parts: about 70,000) out of the cyclic garbage collector's reach.

    Called once the service is up.  Otherwise each full collection walks
    them all, holding the reactor for 40-75 ms, and under load (every HTTP
    request leaves a few objects in reference cycles behind) one comes
    every second or so: long enough to delay AMI pings and FastAGI replies.
    """
    gc.collect()
    gc.freeze()


def _in_threads(reactor: Any) -> Any:
    """``run(fn, *args)``: ``fn`` on the reactor's thread pool (blocking
    file work), its result as a Deferred."""

    def run(fn: Any, *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    return run


def run(config: Config, reactor: Any = None) -> int:
    """Run the service until SIGINT/SIGTERM; returns the exit code."""
    from twisted.logger import LogLevel, globalLogBeginner

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    # [log] level and format (AGI_APP_LOG_LEVEL, AGI_APP_LOG_FORMAT override them)
    level = LogLevel.levelWithName(config.log.level.lower())
    globalLogBeginner.beginLoggingTo(
        [service_log_observer(sys.stdout, level, config.log.format.lower())],
        redirectStandardIO=False,
    )
    app = Application(config, reactor)
    status = {"code": 0}

    def started_failed(failure) -> None:
        log.failure("agi_app could not start", failure)
        status["code"] = 1
        reactor.stop()

    def begin() -> None:
        d = defer.ensureDeferred(app.start())
        d.addCallbacks(lambda _: freeze_startup_objects(), started_failed)

    reactor.callWhenRunning(begin)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(app.stop()))
    # SIGTERM stops as cleanly as Ctrl-C (Twisted installs both handlers).
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()
    return status["code"]
