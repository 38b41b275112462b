"""``GET /metrics``: the Prometheus text format, made by ``prometheus_client``.

Per-request series (``iot_bridge_requests_total``, ``iot_bridge_request_duration_seconds``,
``iot_bridge_refused_total``) live in :mod:`bridge.stats`, fed by the dispatcher.  Everything
else is read from the running bridge when Prometheus scrapes, so it costs nothing in between.
Every series is described in docs/operations.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import stats as stats_module
from ..functions import Unavailable
from .health import verdict

if TYPE_CHECKING:
    from .server import BridgeView


class BridgeCollector(Collector):
    """The bridge's state at scrape time: connections, in flight, parked replies, outbox, ..."""

    def __init__(self, view: "BridgeView") -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view
        yield _gauge("iot_bridge_up", "1 while the bridge serves (what /__/health answers 200 for), else 0.",
                     1 if verdict(view)[0] == "serving" else 0)
        dispatcher, link = view.dispatcher, view.link
        if dispatcher is not None:
            yield _gauge("iot_bridge_in_flight", "Requests being worked on (MQTT and HTTP), not yet answered.",
                         dispatcher.in_flight)
            yield _gauge("iot_bridge_parked_replies", "Replies waiting for the reply connection to come back.",
                         dispatcher.lanes.parked)
        yield _gauge("iot_bridge_max_in_flight", "limits.max_in_flight: the bound of iot_bridge_in_flight.",
                     view.config.limits.max_in_flight)
        if link is not None:
            connected = GaugeMetricFamily("iot_bridge_connected", "1 while the broker connection is up, else 0.",
                                          labels=["connection"])
            reconnects = CounterMetricFamily("iot_bridge_reconnects", "Connections made after the first one.",
                                             labels=["connection"])
            for conn in link.connections:
                connected.add_metric([conn.name], 1 if conn.is_connected else 0)
                reconnects.add_metric([conn.name], max(conn.connections - 1, 0))
            yield connected
            yield reconnects
        yield from self._functions()
        if view.things is not None:
            yield from _outbox(view.things.stats())

    def _functions(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("iot_bridge_function_loaded",
                               "1 when the function imported, 0 when its route answers 503.", labels=["function"])
        names: set[str] = set()
        for route in self.view.routes:
            name = route.config.handler
            if name is not None and name not in names:
                names.add(name)
                up.add_metric([name], 0 if isinstance(route.function, Unavailable) else 1)
        yield up
        workers = GaugeMetricFamily("iot_bridge_workers", "Worker processes (or the daemon's threads), by state.",
                                    labels=["state"])
        states: dict[str, int] = {}
        for worker in self.view.executor.describe() if self.view.executor is not None else []:
            states[worker["state"]] = states.get(worker["state"], 0) + 1
        for state, count in sorted(states.items()):
            workers.add_metric([state], count)
        yield workers
        yield CounterMetricFamily("iot_bridge_worker_restarts",
                                  "Worker processes replaced after a death, a timeout or a blocked loop.",
                                  value=stats_module.worker_restarts())


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _outbox(figures: dict[str, int]) -> Iterator[Metric]:
    yield _gauge("iot_bridge_outbox_pending", "Thing updates waiting in the outbox for the API.",
                 max(figures.get("pending", 0), 0))
    delivered = CounterMetricFamily("iot_bridge_outbox_delivered", "Thing updates the API accepted.",
                                    value=figures.get("delivered", 0))
    dropped = CounterMetricFamily("iot_bridge_outbox_dropped", "Thing updates dropped, by reason.",
                                  labels=["reason"])
    dropped.add_metric(["full"], figures.get("dropped_full", 0))
    dropped.add_metric(["expired"], figures.get("dropped_expired", 0))
    dropped.add_metric(["refused"], figures.get("failed_final", 0))
    yield delivered
    yield dropped


class HttpCounters:
    """Counters of the HTTP side itself (children cached: no label lookups per request)."""

    def __init__(self, registry: object) -> None:
        self._requests = Counter("iot_bridge_http_requests", "HTTP requests served, by endpoint and status.",
                                 ["endpoint", "status"], registry=registry)
        self._callbacks = Counter("iot_bridge_callbacks", "X-Callback-Url deliveries, by outcome.",
                                  ["outcome"], registry=registry)
        self._children: dict[tuple[str, int], object] = {}

    def request(self, endpoint: str, status: int) -> None:
        child = self._children.get((endpoint, status))
        if child is None:
            child = self._children[(endpoint, status)] = self._requests.labels(endpoint, str(status))
        child.inc()  # type: ignore[attr-defined]

    def callback(self, outcome: str) -> None:
        self._callbacks.labels(outcome).inc()


def register(view: "BridgeView") -> HttpCounters:
    """Add the bridge's collectors to its registry; return the HTTP side's counters."""
    registry = view.stats.registry
    registry.register(BridgeCollector(view))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu, open fds, start time
    return HttpCounters(registry)


async def metrics(request: web.Request) -> web.Response:
    view: BridgeView = request.app["view"]
    body = generate_latest(view.stats.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
