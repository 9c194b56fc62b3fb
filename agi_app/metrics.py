"""Prometheus metrics of one application: ``GET /metrics`` (CONTRACT section 10).

Every metric of one :class:`~agi_app.app.Application` lives in the
:class:`~prometheus_client.CollectorRegistry` of its :class:`Metrics` (no
module-level registry: a process, or a test, may hold several applications),
and the exposition text is prometheus_client's.  Two kinds of collector:

* **counted as it happens**, on the reactor thread: final statuses, call
  setup and talk times and store write times (from the call lifecycle's
  :attr:`~agi_app.calls.lifecycle.Lifecycle.on_status`), and HTTP answers
  (from the API resource's observer).  They are kept in plain lists and
  dicts (:class:`Histogram`): an observation costs a bisect and two
  additions, with no lock, since only the reactor thread touches them;
* **read when scraped**: the AMI links, the FastAGI listener, the widgets
  and the store's counters (attributes, read at once) and the webhook
  outbox (SQL, run on the store's worker thread before the text is made,
  so the reactor never waits for it).

Names, types, labels and example queries: ``docs/operations.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.logger import Logger
from twisted.web.resource import Resource

from agi_app.agi import OUTCOMES
from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import StatusLogged
from agi_app.web import params as p
from agi_app.web.api import ApiRequest, ApiResponse, Router
from agi_app.web.openapi import paths

__all__ = [
    "CALL_SETUP_BUCKETS",
    "HTTP_BUCKETS",
    "METRICS",
    "STORE_WRITE_BUCKETS",
    "TALK_BUCKETS",
    "Histogram",
    "Metrics",
    "WebhookBacklog",
]

log = Logger(namespace="agi_app.metrics")

#: seconds from CALL to CLIENT_PICKUP: the operator answers, hears the
#: announcement, the client's phone rings
CALL_SETUP_BUCKETS = (2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
#: seconds of conversation with the client
TALK_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
#: seconds an API request takes
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: seconds the store takes to write a call status (queue + transaction)
STORE_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# An HTTP method outside these is counted as "other": the label's values stay few.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


class Histogram:
    """Observations counted in fixed buckets, per tuple of label values.

    Only the reactor thread observes and collects, so there is no lock;
    the cumulative bucket counts Prometheus wants are made when scraped.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 labels: Sequence[str] = ()):  # fmt: skip
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"{name}: buckets must grow")
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.labels = tuple(labels)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        #: label values -> [sum, count in bucket 0, ..., count above the last bound]
        self._series: dict[tuple[str, ...], list[float]] = {}
        if not self.labels:  # one series, shown (all zero) from the start
            self._series[()] = [0.0] * (len(self.bounds) + 2)

    def observe(self, value: float, labels: tuple[Any, ...] = ()) -> None:
        """Count ``value`` in the series of ``labels`` (values shown as text)."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.bounds) + 2)
        series[0] += value
        # bucket i holds values <= bounds[i] (Prometheus' "le")
        series[1 + bisect_left(self.bounds, value)] += 1

    def family(self) -> HistogramMetricFamily:
        """The metric family of every series observed so far."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, series in sorted(self._series.items()):
            cumulative = itertools.accumulate(series[1:])
            family.add_metric([str(v) for v in key],
                              list(zip(self._les, cumulative, strict=True)), series[0])  # fmt: skip
        return family


class _CallCollector:
    """Final statuses, setup and talk times, store write times: from the
    lifecycle's :class:`~agi_app.calls.lifecycle.StatusLogged`."""

    def __init__(self, pbxs: Iterable[str] = ("default",)) -> None:
        # every final status of every PBX from the start, so rate() sees the first one
        self.finals: Counter[tuple[str, str]] = Counter(
            dict.fromkeys(((s, p) for p in pbxs for s in sorted(st.FINAL)), 0)
        )
        self.setup = Histogram(
            "agi_app_call_setup_seconds",
            "Seconds from CALL to CLIENT_PICKUP of the calls whose client answered.",
            CALL_SETUP_BUCKETS,
        )
        self.talk = Histogram(
            "agi_app_call_talk_seconds",
            "Seconds of conversation with the client (CLIENT_PICKUP to the end) of "
            "the calls that ended in FINISH with a known talk time.",
            TALK_BUCKETS,
        )
        self.store_write = Histogram(
            "agi_app_store_write_seconds",
            "Seconds the store took to write a call status (waiting for its writer "
            "thread and the transaction).",
            STORE_WRITE_BUCKETS,
        )

    def status_logged(self, logged: StatusLogged) -> None:
        status = logged.entry["status"]
        self.store_write.observe(logged.write_seconds)
        call = logged.call
        if status in st.FINAL:
            self.finals[status, logged.entry.get("pbx", "default")] += 1
            if status == st.FINISH and logged.talk_seconds is not None:
                self.talk.observe(logged.talk_seconds)
        elif status == st.CLIENT_PICKUP and not call.pickup_unseen:
            created = call.logged_at.get(st.CALL)
            picked = call.logged_at.get(st.CLIENT_PICKUP)
            if created is not None and picked is not None:
                self.setup.observe(max(0.0, picked - created))

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "agi_app_calls", "Calls that reached their final status, by that status and PBX.",
            labels=("final_status", "pbx"),
        )  # fmt: skip
        for (status, pbx), count in sorted(self.finals.items()):
            calls.add_metric([status, pbx], count)
        yield calls
        yield self.setup.family()
        yield self.talk.family()
        yield self.store_write.family()


class _HTTPCollector:
    """``agi_app_http_request_duration_seconds{route,method,code}``."""

    def __init__(self) -> None:
        self.requests = Histogram(
            "agi_app_http_request_duration_seconds",
            "Seconds an HTTP API request took, by route pattern, method and status code "
            "(route 'unmatched': no route matched; code 499: the client went away first).",
            HTTP_BUCKETS,
            labels=("route", "method", "code"),
        )

    def observe(self, method: str, route: str | None, code: int, seconds: float) -> None:
        # called for every request: the code stays a number until scraped
        self.requests.observe(seconds, (
            route or "unmatched", method if method in _METHODS else "other", code
        ))  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        yield self.requests.family()


class WebhookBacklog:
    """What the webhook outbox holds, read from the store when scraped.

    The queries run on the store's worker thread (the store's own
    Deferred API), before the exposition is made; :meth:`collect` only
    reads what the last :meth:`refresh` found.
    """

    def __init__(self, store: Any, clock: Any):
        self.store = store
        self.clock = clock
        #: (deliveries waiting, age of the oldest in seconds, given up), or None
        self.found: tuple[int, float, int] | None = None

    async def refresh(self) -> None:
        """Read the outbox; on a store error the webhook metrics are left out
        of this scrape (and the error logged)."""
        try:
            subscriptions = await self.store.subscriptions()
            waiting = await self.store.subscriptions_with_pending()
            backlog, oldest = 0, None
            for sub_id in waiting:
                summary = await self.store.delivery_summary(sub_id)
                backlog += summary["pending"] or 0
                at = summary["oldest_pending_at"]
                if at is not None and (oldest is None or at < oldest):
                    oldest = at
        except Exception as e:
            log.warn("metrics: the webhook outbox could not be read: {e}", e=e)
            self.found = None
            return
        age = max(0.0, self.clock.seconds() - oldest) if oldest is not None else 0.0
        given_up = sum(s.get("given_up") or 0 for s in subscriptions)
        self.found = (backlog, age, given_up)

    def collect(self) -> Iterator[Metric]:
        if self.found is None:
            return
        backlog, age, given_up = self.found
        yield GaugeMetricFamily(
            "agi_app_webhook_backlog", "Webhook deliveries waiting in the outbox.", backlog
        )
        yield GaugeMetricFamily(
            "agi_app_webhook_oldest_undelivered_age_seconds",
            "Age of the oldest event still waiting for a delivery (0: none waits).", age,
        )  # fmt: skip
        yield CounterMetricFamily(
            "agi_app_webhook_given_up",
            "Webhook deliveries given up, summed over the existing subscriptions.", given_up,
        )  # fmt: skip


class _StateCollector:
    """AMI links, FastAGI listener, widgets, store counters: read when scraped."""

    def __init__(self, *, amis: Callable[[], Iterable[Any]], agi: Callable[[], Any],
                 widgets: Any, store: Any):  # fmt: skip
        self._amis = amis
        self._agi = agi
        self._widgets = widgets
        self._store = store

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "agi_app_ami_connected",
            "1 while the AMI session with the PBX is logged in and synchronised, else 0.",
            labels=("pbx",),
        )
        events = CounterMetricFamily(
            "agi_app_ami_events_received", "AMI events received from the PBX.", labels=("pbx",)
        )
        for ami in self._amis():
            connected.add_metric([ami.link_name], 1 if ami.connected else 0)
            events.add_metric([ami.link_name], ami.events_received)
        yield connected
        yield events
        factory = self._agi()
        outcomes = dict.fromkeys(OUTCOMES, 0)
        if factory is not None:
            outcomes.update(factory.outcomes)
        yield GaugeMetricFamily(
            "agi_app_fastagi_sessions_active", "FastAGI connections open now.",
            factory.active if factory is not None else 0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "agi_app_fastagi_sessions", "FastAGI sessions started.",
            factory.total if factory is not None else 0,
        )  # fmt: skip
        ended = CounterMetricFamily(
            "agi_app_fastagi_sessions_ended", "FastAGI sessions ended, by how the script ended.",
            labels=("outcome",),
        )  # fmt: skip
        for outcome, count in sorted(outcomes.items()):
            ended.add_metric([outcome], count)
        yield ended
        yield CounterMetricFamily(
            "agi_app_fastagi_connections_refused",
            "FastAGI connections closed at once: the peer is not in [agi] allowed_peers.",
            factory.refused if factory is not None else 0,
        )
        hub = self._widgets
        if hub is not None:
            yield GaugeMetricFamily(
                "agi_app_widget_connections", "Browser widgets connected now.", hub.connections
            )
            yield CounterMetricFamily(
                "agi_app_widget_messages_sent", "Messages sent to browser widgets.", hub.sent
            )
            refused = CounterMetricFamily(
                "agi_app_widget_refused", "Widget connections refused, by reason.",
                labels=("reason",),
            )  # fmt: skip
            for reason, count in sorted(hub.refusals.items()):
                refused.add_metric([reason], count)
            yield refused
        moved = getattr(self._store, "reads_moved", None)
        if moved is not None:
            yield CounterMetricFamily(
                "agi_app_store_reads_moved",
                "API reads that ran over [store] read_budget_us and were done again on "
                "the store's worker thread.", moved,
            )  # fmt: skip


METRICS = p.Operation(
    methods=("GET",),
    path="/metrics",
    summary="Prometheus metrics",
    description=(
        "Every metric of this process in the Prometheus text format (OpenMetrics when "
        "the Accept header asks for it). Needs an API key unless `[metrics] open = yes`. "
        "See docs/operations.md."
    ),
    tag="meta",
    answers=(
        p.Answer(200, "the metrics", {"type": "string"},
                 media_types=("text/plain; version=0.0.4",)),  # fmt: skip
    ),
    errors=(401,),
    formats=False,
)


class _MetricsText(Resource):
    """A twisted.web resource rendering ready exposition bytes."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: str):
        super().__init__()
        self.body = body
        self.content_type = content_type.encode("latin-1")

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-store")
        return self.body


class Metrics:
    """Every metric of one application, in a registry of its own.

    :param clock: an ``IReactorTime`` (the age of the oldest webhook)
    :param store: the store (webhook outbox, its counters); None: no webhook metrics
    :param amis: a function giving the AMI services (one per PBX)
    :param agi: a function giving the FastAGI factory (None while not listening)
    :param widgets: the widget hub (:class:`~agi_app.ws.WidgetHub`), if any
    :param pbxs: the names of the PBXs (their call counters start at 0)

    Wire :meth:`status_logged` to the lifecycle's ``on_status`` and
    :meth:`observe_request` to the HTTP site's ``observe``.
    """

    def __init__(
        self,
        *,
        clock: Any,
        store: Any = None,
        amis: Callable[[], Iterable[Any]] = tuple,
        agi: Callable[[], Any] = lambda: None,
        widgets: Any = None,
        pbxs: Iterable[str] = ("default",),
    ):
        self.registry = CollectorRegistry(auto_describe=False)
        self._calls = _CallCollector(pbxs)
        self._http = _HTTPCollector()
        self.webhooks = WebhookBacklog(store, clock) if store is not None else None
        collectors: list[Any] = [
            self._calls,
            self._http,
            _StateCollector(amis=amis, agi=agi, widgets=widgets, store=store),
        ]
        if self.webhooks is not None:
            collectors.append(self.webhooks)
        for collector in collectors:
            self.registry.register(collector)
        self._operation = METRICS
        #: an HTTP ``observe`` hook (:data:`agi_app.web.api.RequestObserver`):
        #: ``observe_request(method, route, code, seconds)``
        self.observe_request = self._http.observe

    # -- what is counted as it happens ----------------------------------------

    def status_logged(self, logged: StatusLogged) -> None:
        """A lifecycle ``on_status`` observer."""
        self._calls.status_logged(logged)

    # -- the exposition --------------------------------------------------------

    async def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """``(body, content type)`` of every metric now, in the format the
        ``Accept`` header asks for (Prometheus text by default)."""
        if self.webhooks is not None:
            await self.webhooks.refresh()
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def add_routes(self, router: Router, *, open_access: bool = False) -> None:
        """``GET /metrics``, with an API key unless ``open_access`` (``[metrics] open``)."""
        self._operation = dataclasses.replace(METRICS, auth=not open_access)
        p.add_route(router, self._operation, self._serve)

    def openapi_paths(self) -> dict[str, Any]:
        """The OpenAPI entry of ``/metrics`` as routed (open or with a key)."""
        return paths([self._operation])

    async def _serve(self, req: ApiRequest, args: dict[str, Any]) -> ApiResponse:
        body, content_type = await self.exposition(req.header("Accept"))
        return ApiResponse(resource=_MetricsText(body, content_type))
