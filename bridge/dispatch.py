"""Message -> route -> Event -> function -> reply.

Everything here runs on the bridge's event loop thread except :meth:`Dispatcher._run_sync`,
which runs on a route's worker thread and hands its outcome back with
``call_soon_threadsafe``.  When replies are published and requests acknowledged is the
business of :mod:`bridge.delivery`; the transport is the only thing that talks to the broker.

* Every request is answered, also when the function raises, times out or returns garbage,
  and then acknowledged: a poison message is never redelivered in a loop.
* At most ``limits.max_in_flight`` requests, and about ``limits.max_in_flight_bytes`` of
  their payloads, are in flight at once, split between the request sessions (bridge.lanes):
  a session at its share stops reading, and the rest of its requests wait in the broker.
* HTTP invocations come in through :meth:`Dispatcher.call` and run on the same path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from .codec import check_request, encode_reply, event_from_message
from .config import BridgeConfig, RouteConfig
from .contract import Event, Response, error_body
from .crashguard import CrashGuard
from .delivery import Held
from .functions import FunctionInfo, Unavailable
from .iotstudio.automation import ThingSink, write_thing
from .lanes import Lane, Lanes, Replies, Session
from .message import Inbound, Outbound
from .replystore import ReplyStore
from .routing import ReplyPolicy, matches
from .stats import REJECTION_REASONS, RouteStats, Stats
from .workers import Executor

log = logging.getLogger("bridge.dispatch")
access_log = logging.getLogger("bridge.access")


class Publisher(Replies, Protocol):
    """What the dispatcher needs from the broker link (bridge.link.BrokerLink)."""

    @property
    def sessions(self) -> Sequence[Session]: ...  # the request sessions, one lane each
    def flush(self) -> None: ...  # write queued packets now


@dataclass(eq=False)
class Route:
    """A configured route and what is known of its function (None: a no-code Thing route).

    At most ``config.concurrency`` of its calls run at once; the rest wait in ``pending``,
    their timeout not yet running.
    """

    index: int
    config: RouteConfig
    function: FunctionInfo | Unavailable | None
    active: int = 0
    starting: bool = False  # its waiting calls are being started (see Dispatcher._release)
    pending: deque["Job"] = field(default_factory=deque)
    stats: RouteStats = None  # type: ignore[assignment]  (set by the dispatcher)


@dataclass(eq=False, slots=True)
class Job(Held):
    route: Route = None  # type: ignore[assignment]  (always given)
    lane: Lane | None = None  # the request session it came on (None: an HTTP call)
    reply_to: str | None = None
    arrived: float = 0.0  # time.monotonic(): the loop's clock may tick in whole milliseconds
    done: bool = False  # answered
    running: bool = False  # holds one of its route's concurrency slots
    timer: asyncio.TimerHandle | None = None
    call: Any = None  # the executor's handle on the running call
    guard_key: str | None = None  # counted by the crash guard (a redelivered request)
    event: Event | None = None  # an HTTP call's Event (see Dispatcher.call); else built from msg
    caller: asyncio.Future[Response] | None = None  # an HTTP call is answered here, not over MQTT


@dataclass(eq=False)
class Dispatcher:
    config: BridgeConfig
    routes: list[Route]
    publisher: Publisher
    loop: asyncio.AbstractEventLoop
    executor: Executor | None = None
    things: ThingSink | None = None
    replies: ReplyStore | None = None
    guard: CrashGuard | None = None
    stats: Stats = field(default_factory=Stats)
    in_flight: int = 0
    in_flight_bytes: int = 0  # payload bytes of the requests in flight
    peak_in_flight: int = 0  # the most requests ever in flight at once
    _closing: bool = False  # shutting down: intake stays stopped
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _held: dict[int, Job] = field(default_factory=dict)  # id -> job still in flight (for shutdown)

    def __post_init__(self) -> None:
        self._idle.set()
        self.lanes = Lanes(Lane.open(i, self.publisher, s, self.replies, self._released_slot)
                           for i, s in enumerate(self.publisher.sessions))
        self._configure()

    def _configure(self) -> None:
        """Derive the per-config state (at start and on every reload)."""
        self._max = self.config.limits.max_in_flight
        self.lanes.share(self._max, self.config.limits.max_in_flight_bytes)
        self._reply_policy = ReplyPolicy(self.config.replies.allowed_topics, [r.config.topic for r in self.routes])
        self._log_payloads = self.config.logging.log_payloads
        self._access = self.config.logging.access
        for route in self.routes:
            source = route.function.source_file if isinstance(route.function, FunctionInfo) else None
            route.stats = self.stats.route(route.config.topic, route.config.handler, source)

    # -- intake -------------------------------------------------------------------------------
    def set_routes(self, config: BridgeConfig, routes: list[Route]) -> None:
        """Serve ``routes`` from now on (a reload); requests already running finish as they were."""
        self.config, self.routes = config, routes
        self._configure()

    def route_for(self, msg: Inbound) -> Route | None:
        """The route a message was delivered for: by v5 subscription id, else first match."""
        for sid in msg.subscription_ids:
            # A message queued before a reload carries the id of the old route order.
            if 0 < sid <= len(self.routes) and matches(self.routes[sid - 1].config.topic, msg.topic):
                return self.routes[sid - 1]
        return next((r for r in self.routes if matches(r.config.topic, msg.topic)), None)

    def handle(self, msg: Inbound, session: int = 0) -> None:
        """Take one message from request session ``session`` (event loop thread)."""
        lane = self.lanes[session]
        ledger = lane.ledger
        if msg.qos and ledger.absorb(msg):
            return  # the broker's copy of a request already held
        if self._closing:
            return  # shutting down: not acknowledged, so the broker keeps it for the next start
        if self._log_payloads:
            log.info("message on %s (qos %d, %d bytes): %r", msg.topic, msg.qos, len(msg.payload), msg.payload[:1024])
        route = self.route_for(msg)
        if route is None:
            log.warning("no route for topic %r; acknowledged and dropped", msg.topic)
            self.stats.refused("no_route")
            ledger.ignore(msg)
            return
        job = Job(msg, route=route, lane=lane, reply_to=self._reply_topic(msg, route), arrived=time.monotonic())
        self._take(job)
        stored = ledger.hold(job)
        if stored is not None:
            # Redelivered after a restart, answered before the broker came back: reuse the reply.
            job.done = True
            ledger.send(job, stored)
            return
        rejection = check_request(msg, self.config.limits.max_payload)
        if rejection is not None:
            self.stats.refused(REJECTION_REASONS.get(rejection.status, "method"))
            self._finish(job, rejection)
        else:
            self._run(job)

    def call(self, route: Route, event: Event) -> asyncio.Future[Response]:
        """Run ``route``'s function on ``event`` as an MQTT request on that route is run (the
        HTTP front end's only way in; event loop thread).

        Same executor, concurrency, timeout, ``limits.max_in_flight`` slot, logging, metrics
        and result rules; ``await`` the returned future for the Response.  The future is
        already done when the request is refused without running: at the in-flight bound
        (429), shutting down (503), or a function that failed to import (503).
        """
        future: asyncio.Future[Response] = self.loop.create_future()
        if self._closing:
            self.stats.refused("shutting_down")
            future.set_result(error_body(503, "the bridge is shutting down", kind="ShuttingDown"))
        elif self.in_flight >= self._max:
            self.stats.refused("max_in_flight")
            future.set_result(error_body(429, f"{self.in_flight} requests in flight: at limits.max_in_flight",
                                         kind="TooManyRequests"))
        else:
            # The route's topic stands in for the MQTT topic in logs and Thing writes.
            job = Job(Inbound(route.config.topic, event.body), route=route, arrived=time.monotonic(),
                      event=event, caller=future)
            self._take(job)
            self._run(job)
        return future

    def _run(self, job: Job) -> None:
        """Start the job's function, queue it for a concurrency slot, or answer why it cannot
        run (MQTT requests and HTTP calls alike)."""
        route, function = job.route, job.route.function
        if isinstance(function, Unavailable):
            self.stats.refused("unavailable")
            self._finish(job, error_body(503, f"function {function.name} is unavailable: {function.reason}",
                                         kind="ImportError"))
        elif function is None:  # a no-code Thing route: the payload is the update
            self._finish(job, write_thing(self.things, route.config.thing, job.msg, None))  # type: ignore[arg-type]
        elif route.active < route.config.concurrency:
            self._start(job)
        else:
            route.pending.append(job)

    def _reply_topic(self, msg: Inbound, route: Route) -> str | None:
        if msg.response_topic is not None:
            topic, requested = msg.response_topic, True
        elif route.config.reply_topic is not None:
            topic, requested = route.config.reply_topic.format(topic=msg.topic), False
        else:
            return None
        verdict = self._reply_policy.refusal(topic, requested=requested)
        if verdict:
            self.stats.refused("reply_topic")
            log.warning("%s %r %s; no reply published", "response topic" if requested else "reply topic",
                        topic, verdict)
            return None
        return topic

    def _take(self, job: Job) -> None:
        size = len(job.msg.payload)
        self.in_flight += 1
        self.in_flight_bytes += size
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        self._held[id(job)] = job
        self._idle.clear()
        if job.lane is not None:
            job.lane.take(size)

    # -- running ------------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        msg = job.msg
        if msg.dup and msg.qos and self.guard is not None:
            # Counted as its function starts, not as it arrives: a request that waited for a
            # slot while the bridge died did not crash it.
            admitted, job.guard_key = self.guard.admit(msg)
            if not admitted:
                self._finish(job, error_body(500, "this request crashed the bridge twice; not run again",
                                             kind="CrashLoop"))
                return
        route = job.route
        route.active += 1
        job.running = True
        assert self.executor is not None and route.config.handler is not None
        event = job.event if job.event is not None else event_from_message(job.msg)
        self.executor.submit(job, route.config.handler, event)

    def started(self, job: Job) -> None:
        """The executor started the call: its timeout counts from now."""
        if not job.done:
            job.timer = self.loop.call_later(job.route.config.timeout, self._expire, job)

    def completed(self, job: Job, response: Response) -> None:
        """The executor's outcome of a call (on the event loop)."""
        if job.done:
            return  # answered already: it timed out
        self._release(job)
        self._finish(job, response)

    def _release(self, job: Job) -> None:
        """Give the job's concurrency slot to the next request waiting for it."""
        if not job.running:
            return
        job.running = False
        route = job.route
        route.active -= 1
        if route.starting:
            return  # a call refused as it started (thread mode, all threads stuck): the loop below goes on
        route.starting = True
        try:  # a loop, not recursion: hundreds may wait, and each refusal releases its slot at once
            while route.pending and route.active < route.config.concurrency:
                self._start(route.pending.popleft())
        finally:
            route.starting = False

    def _expire(self, job: Job) -> None:
        if job.done:
            return
        assert self.executor is not None
        self.executor.abandon(job)
        self._release(job)
        self._finish(job, error_body(504, f"function {job.route.config.handler} timed out after "
                                          f"{job.route.config.timeout:g} s", kind="Timeout"))
        self.publisher.flush()

    # -- replying -----------------------------------------------------------------------------
    def _finish(self, job: Job, response: Response) -> None:
        """Answer ``job``.  Nothing raised here may reach the event loop: the request would be
        neither answered nor acknowledged, and its slot would leak."""
        job.done = True
        if job.timer is not None:
            job.timer.cancel()
        try:
            if job.route.config.thing is not None and response.status < 300 and job.route.function is not None:
                response = write_thing(self.things, job.route.config.thing, job.msg, response)
            self._report(job, response)
            if job.caller is not None:  # an HTTP call: answered there, nothing to publish or ack
                self._answer_call(job, response)
                return
            out = self._encode(job, response) if job.reply_to is not None else None
        except Exception:
            log.exception("answering a request on %s failed; acknowledged without a reply", job.msg.topic)
            out = None
        ledger = job.lane.ledger  # type: ignore[union-attr]  (an MQTT request has its lane)
        try:
            ledger.send(job, out)
        except Exception:
            log.exception("publishing the reply to %s failed; acknowledged without a reply", job.reply_to)
            ledger.send(job, None)
        job.route.stats.done(response, time.monotonic() - job.arrived)

    def _answer_call(self, job: Job, response: Response) -> None:
        """Hand an HTTP call its response and free its slot (it has no ack to wait for)."""
        assert job.caller is not None
        if not job.caller.done():  # done: the caller gave up waiting
            job.caller.set_result(response)
        job.route.stats.done(response, time.monotonic() - job.arrived)
        self._released_slot(job)

    def _encode(self, job: Job, response: Response) -> Outbound:
        msg, fmt = job.msg, job.route.config.reply_format
        try:
            return encode_reply(response, fmt, job.reply_to, msg.qos, msg.correlation_data)  # type: ignore[arg-type]
        except Exception as exc:  # e.g. a header over 65,535 bytes, a lone surrogate
            error = error_body(500, f"reply could not be encoded: {exc}", kind="ReplyEncodingError")
            self._report(job, error)
            return encode_reply(error, fmt, job.reply_to, msg.qos, msg.correlation_data)  # type: ignore[arg-type]

    def _report(self, job: Job, response: Response) -> None:
        """The bridge's log: every failure once at WARNING; with ``logging.access`` every request."""
        failure = response.failure
        if failure is not None:
            where = f" ({failure.where})" if failure.where else ""
            log.warning("request on %s for route %s, function %s: %d %s: %s%s", job.msg.topic, job.route.config.topic,
                        job.route.config.handler or "-", response.status, failure.kind, failure.message, where)
        if self._access:
            access_log.info("%s %s %d %.1f ms", job.msg.topic, job.route.config.handler or "-", response.status,
                            (time.monotonic() - job.arrived) * 1000)

    def _released_slot(self, held: Held) -> None:
        """The ledger is done with a request: it no longer counts as in flight."""
        self._held.pop(id(held), None)
        key = held.guard_key  # type: ignore[attr-defined]
        if key is not None and self.guard is not None:
            self.guard.forget(key)
        size = len(held.msg.payload)  # a copy taken meanwhile has the same payload
        self.in_flight -= 1
        self.in_flight_bytes -= size
        if self.in_flight == 0:
            self._idle.set()
        lane = held.lane  # type: ignore[attr-defined]
        if lane is not None:
            lane.release(size, self._closing)

    def stop_intake(self) -> None:
        """Take no new messages, for good (shutdown); in-flight ones still finish."""
        self._closing = True
        self.lanes.stop()

    # -- the broker link's news, per request session ------------------------------------------
    async def session_idle(self, session: int) -> None:
        """Return once nothing of request session ``session`` is in flight."""
        await self.lanes[session].idle.wait()

    def session_closed(self, session: int) -> None:
        """Request session ``session`` is closed for good: its share goes to the others."""
        self.lanes[session].serving = False
        if not self._closing:
            self.lanes.share(self._max, self.config.limits.max_in_flight_bytes)

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for every request to be answered and acknowledged.

        Requests still in flight then (unanswered, or answered but not yet acknowledged) are
        left to the broker, which redelivers them at the next start; a clean shutdown is not a
        crash, so the crash guard does not count them.
        """
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return True
        except TimeoutError:
            if self.guard is not None:
                for job in self._held.values():
                    if job.msg.qos:
                        self.guard.spare(job.msg, job.guard_key)
            return False
