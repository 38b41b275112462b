"""Request figures: one place that counts what the dispatcher answers.

The dispatcher feeds it with one call per answered request (:meth:`RouteStats.done`) and one
per refusal (:meth:`Stats.refused`); ``/metrics`` and the status page only read it.  Every MQTT
message passes through here, so the per-request path is a few attribute updates: the
Prometheus children of a route are made once and cached (no label lookups, no string
formatting per message), and the recent-latency window is a per-minute histogram.

Durations run from the request's arrival in the dispatcher to its reply being handed to the
broker (for an HTTP call: to the response being ready).

Worker restarts are counted by :func:`worker_restarted`, which the code that runs functions in
worker processes calls each time it replaces one.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

from .contract import Response

# No ``*_created`` series: they double what a scrape carries and no query here uses them.
disable_created_metrics()

WINDOW_MINUTES = 5  # the status page's p50/p99 cover this many minutes
# Upper bounds of the window's latency buckets: 10 us to ~10 min, 10 % apart (p99 within 10 %).
_BOUNDS: tuple[float, ...] = tuple(1e-5 * 1.1 ** i for i in range(190))
# Buckets of iot_bridge_request_duration_seconds: sub-millisecond up to the longest timeouts.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
# Why a request was answered without running its function (iot_bridge_refused_total{reason}).
REFUSALS = ("no_route", "payload_too_large", "properties_too_large", "method", "unavailable",
            "max_in_flight", "shutting_down", "reply_topic", "unauthorized")
# The bridge's own refusals of a request, by the status it answers (bridge.codec.check_request).
REJECTION_REASONS = {413: "payload_too_large", 431: "properties_too_large", 405: "method"}


class Window:
    """Latencies of the last :data:`WINDOW_MINUTES` minutes, one bucket histogram per minute."""

    __slots__ = ("_minutes", "_counts")

    def __init__(self) -> None:
        self._minutes = [-1] * WINDOW_MINUTES
        self._counts: list[list[int]] = [[] for _ in range(WINDOW_MINUTES)]

    def add(self, seconds: float, now: float) -> None:
        minute = int(now // 60)
        slot = minute % WINDOW_MINUTES
        if self._minutes[slot] != minute:  # a new minute: forget what this slot held
            self._minutes[slot] = minute
            self._counts[slot] = [0] * (len(_BOUNDS) + 1)
        self._counts[slot][bisect_left(_BOUNDS, seconds)] += 1

    def summary(self, now: float) -> tuple[int, float | None, float | None]:
        """``(count, p50, p99)`` over the window; quantiles in seconds (None without requests)."""
        current = int(now // 60)
        merged = [0] * (len(_BOUNDS) + 1)
        for minute, counts in zip(self._minutes, self._counts):
            if current - WINDOW_MINUTES < minute <= current:
                for i, n in enumerate(counts):
                    merged[i] += n
        total = sum(merged)
        if not total:
            return 0, None, None
        return total, _quantile(merged, total, 0.50), _quantile(merged, total, 0.99)


def _quantile(counts: list[int], total: int, q: float) -> float:
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank and n:
            return _BOUNDS[i] if i < len(_BOUNDS) else _BOUNDS[-1]
    return _BOUNDS[-1]


@dataclass(frozen=True, slots=True)
class LastError:
    """The last 5xx answer of a function, for the status page."""

    type: str  # exception type, or what the bridge answered (Timeout, Unavailable, ...)
    message: str
    where: str  # file:line in the function's module, "" when not known
    when: float  # wall-clock time


class RouteStats:
    """The figures of one route (its topic filter and function); made once, kept over reloads."""

    __slots__ = ("topic", "function", "source_file", "requests", "errors", "timeouts", "window",
                 "_owner", "_by_status", "_counter", "_duration")

    def __init__(self, owner: "Stats", topic: str, function: str, source_file: str | None) -> None:
        self.topic, self.function, self.source_file = topic, function, source_file
        self.requests = self.errors = self.timeouts = 0
        self.window = Window()
        self._owner = owner
        self._counter = owner.requests_total
        self._by_status: dict[int, Any] = {}  # status -> cached Prometheus child
        self._duration = owner.duration.labels(topic, function)

    def done(self, response: Response, seconds: float) -> None:
        """A request of this route was answered with ``response``, ``seconds`` after it arrived."""
        status = response.status
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._counter.labels(self.topic, self.function, str(status))
        child.inc()
        self._duration.observe(seconds)
        self.requests += 1
        self.window.add(seconds, time.monotonic())
        if status >= 500:
            failure = response.failure
            if failure is not None and failure.kind == "Timeout":
                self.timeouts += 1
            else:
                self.errors += 1
            self._owner.failed(self, response)


class Stats:
    """Every route's figures, the refusals, and the Prometheus registry they live in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests_total = Counter(
            "iot_bridge_requests", "Requests answered, by route (topic filter), function and reply status.",
            ["route", "function", "status"], registry=self.registry)
        self.duration = Histogram(
            "iot_bridge_request_duration_seconds",
            "Seconds from a request's arrival to its reply handed to the broker.",
            ["route", "function"], buckets=DURATION_BUCKETS, registry=self.registry)
        refused = Counter("iot_bridge_refused", "Requests answered without running a function, by reason.",
                          ["reason"], registry=self.registry)
        self._refused = {reason: refused.labels(reason) for reason in REFUSALS}
        self._routes: dict[tuple[str, str], RouteStats] = {}
        self.last_errors: dict[str, LastError] = {}  # function -> its last error
        self.started = time.time()

    def route(self, topic: str, function: str | None, source_file: str | None = None) -> RouteStats:
        """The figures of the route ``topic`` -> ``function`` (the same object after a reload)."""
        name = function or "-"
        stats = self._routes.get((topic, name))
        if stats is None:
            stats = self._routes[(topic, name)] = RouteStats(self, topic, name, source_file)
        stats.source_file = source_file
        return stats

    def refused(self, reason: str) -> None:
        """A request was refused for ``reason`` (one of :data:`REFUSALS`)."""
        self._refused[reason].inc()

    def refused_count(self, reason: str) -> int:
        return int(self._refused[reason]._value.get())  # noqa: SLF001 (the child's own value)

    def failed(self, route: RouteStats, response: Response) -> None:
        """Keep a 5xx answer as the function's last error (off the per-request fast path)."""
        failure = response.failure
        if failure is None:  # the function chose a 5xx status itself
            kind, message, where = f"status {response.status}", f"the function answered {response.status}", ""
        else:
            kind, message, where = failure.kind, failure.message, failure.where
            data = response.data
            details = (data.get("error") or {}).get("details") or {} if isinstance(data, dict) else {}
            if "exception_info" in details:  # the message without "Type at line N:"
                message = str(details["exception_info"])
            if where:
                path, _, line = where.rpartition(":")
                where = f"{os.path.basename(path)}:{line}"
        self.last_errors[route.function] = LastError(kind, message, where, time.time())


# -- worker restarts: counted here by the code that runs functions in worker processes ---------
_restarts = 0
_restarts_lock = threading.Lock()


def worker_restarted() -> None:
    """Count one replaced worker process (after a death, a timeout or a blocked loop).

    Thread-safe; exported as ``iot_bridge_worker_restarts_total``.
    """
    global _restarts
    with _restarts_lock:
        _restarts += 1


def worker_restarts() -> int:
    """Worker processes replaced so far."""
    with _restarts_lock:
        return _restarts
