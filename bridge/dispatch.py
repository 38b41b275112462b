"""Message -> route -> Event -> function -> reply.

Everything here runs on the bridge's event loop thread except :meth:`Dispatcher._run_sync`,
which runs on a route's worker thread and hands its outcome back with
``call_soon_threadsafe``.  When replies are published and requests acknowledged is the
business of :mod:`bridge.delivery`; the transport is the only thing that talks to the broker.

* Every request is answered, also when the function raises, times out or returns garbage,
  and then acknowledged: a poison message is never redelivered in a loop.
* At most ``limits.max_in_flight`` requests are in flight at once; at the bound the link
  stops reading requests, and the rest wait in the broker (bridge.link).
* HTTP invocations come in through :meth:`Dispatcher.call` and run on the same path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codec import check_request, encode_reply, event_from_message
from .config import BridgeConfig, RouteConfig
from .contract import Context, Event, Response, error_body
from .delivery import Held, Ledger, Link
from .iotstudio.automation import ThingSink, write_thing
from .functions import Function, Unavailable, respond, respond_async
from .logs import current_function
from .message import Inbound, Outbound
from .replystore import ReplyStore
from .routing import ReplyPolicy, matches
from .stats import REJECTION_REASONS, RouteStats, Stats
from .workers import WorkerPool

log = logging.getLogger("bridge.dispatch")


class Publisher(Link, Protocol):
    """What the dispatcher needs from the broker link (bridge.link.BrokerLink)."""

    def pause(self) -> None: ...  # stop taking requests
    def resume(self) -> None: ...
    def flush(self) -> None: ...  # write queued packets now


@dataclass(eq=False)
class Route:
    """A configured route with its loaded function (None: a no-code Thing route)."""

    index: int
    config: RouteConfig
    function: Function | Unavailable | None
    pool: WorkerPool | None = None
    stats: RouteStats = None  # type: ignore[assignment]  (set by the dispatcher)


@dataclass(eq=False, slots=True)
class Job(Held):
    route: Route = None  # type: ignore[assignment]  (always given)
    reply_to: str | None = None
    done: bool = False
    running: bool = False
    timer: asyncio.TimerHandle | None = None
    arrived: float = 0.0  # monotonic(); the request duration metric starts here
    event: Event | None = None  # an HTTP call's Event (see Dispatcher.call); else built from msg
    caller: asyncio.Future[Response] | None = None  # an HTTP call is answered here, not over MQTT


@dataclass(eq=False)
class Dispatcher:
    config: BridgeConfig
    routes: list[Route]
    publisher: Publisher
    loop: asyncio.AbstractEventLoop
    context: Context = field(default_factory=Context)
    things: ThingSink | None = None
    replies: ReplyStore | None = None
    stats: Stats = field(default_factory=Stats)
    in_flight: int = 0
    _paused: bool = False
    _closing: bool = False  # shutting down: intake stays stopped
    _completed: deque[tuple[Job, Response]] = field(default_factory=deque)  # from worker threads
    _wake_pending: bool = False
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()
        self.ledger = Ledger(self.publisher, self.replies, self._released_slot)
        self._configure()

    def _configure(self) -> None:
        """Derive the per-config state (at start and on every reload)."""
        self._max = self.config.limits.max_in_flight
        self._resume_at = max(self._max * 3 // 4, self._max - 1)
        self._reply_policy = ReplyPolicy(self.config.replies.allowed_topics, [r.config.topic for r in self.routes])
        self._log_payloads = self.config.logging.log_payloads
        for route in self.routes:
            source = route.function.source_file if isinstance(route.function, Function) else None
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

    def handle(self, msg: Inbound) -> None:
        """Take one message from the transport (event loop thread)."""
        if msg.qos and self.ledger.absorb(msg):
            return  # the broker's copy of a request already held
        if self._closing:
            return  # shutting down: not acknowledged, so the broker keeps it for the next start
        if self._log_payloads:
            log.info("message on %s (qos %d, %d bytes): %r", msg.topic, msg.qos, len(msg.payload), msg.payload[:1024])
        route = self.route_for(msg)
        if route is None:
            log.warning("no route for topic %r; acknowledged and dropped", msg.topic)
            self.stats.refused("no_route")
            self.ledger.ignore(msg)
            return
        job = Job(msg, route=route, reply_to=self._reply_topic(msg, route), arrived=monotonic())
        self._take(job)
        stored = self.ledger.hold(job)
        if stored is not None:
            # Redelivered after a restart, answered before the broker came back: reuse the reply.
            job.done = True
            self.ledger.send(job, stored)
            return
        rejection = check_request(msg, self.config.limits.max_payload)
        if rejection is not None:
            self.stats.refused(REJECTION_REASONS.get(rejection.status, "method"))
            self._finish(job, rejection)
        else:
            self._start(job)

    def call(self, route: Route, event: Event) -> asyncio.Future[Response]:
        """Run ``route``'s function on ``event`` as an MQTT request on that route is run (the
        HTTP front end's only way in; event loop thread).

        Same workers, timeout, ``limits.max_in_flight`` slot, logging, metrics and result
        rules; ``await`` the returned future for the Response.  The future is already done
        when the request is refused without running: at the in-flight bound (429), shutting
        down (503), or a function that is unavailable or busy (503).
        """
        future: asyncio.Future[Response] = self.loop.create_future()
        if self._closing:
            self.stats.refused("shutting_down")
            future.set_result(error_body(503, "the bridge is shutting down"))
        elif self.in_flight >= self._max:
            self.stats.refused("max_in_flight")
            future.set_result(error_body(429, f"{self.in_flight} requests in flight: at limits.max_in_flight"))
        else:
            # The route's topic stands in for the MQTT topic in logs and Thing writes.
            job = Job(Inbound(route.config.topic, event.body), route=route, arrived=monotonic(),
                      event=event, caller=future)
            self._take(job)
            self._start(job)
        return future

    def _start(self, job: Job) -> None:
        """Run the job's function in its style (MQTT requests and HTTP calls alike)."""
        route, function = job.route, job.route.function
        if isinstance(function, Unavailable):
            self.stats.refused("unavailable")
            self._finish(job, error_body(503, f"function {function.name} is unavailable: {function.reason}"))
        elif function is None:  # a no-code Thing route: the payload is the update
            self._finish(job, write_thing(self.things, route.config.thing, job.msg, None))
        elif function.is_async:
            job.running = True
            self.loop.create_task(self._run_async(job, function))
        else:
            assert route.pool is not None
            if route.pool.stuck >= route.pool.size:
                self.stats.refused("busy")
                self._finish(job, error_body(503, f"function {function.name} is busy: every worker is stuck in a timed-out call"))
                return
            job.timer = self.loop.call_later(route.config.timeout, self._expire, job)
            route.pool.submit(self._run_sync, job, function)

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
        self.in_flight += 1
        self._idle.clear()
        if self.in_flight >= self._max and not self._paused:
            self._paused = True
            self.publisher.pause()

    # -- running ------------------------------------------------------------------------------
    def _invoke(self, job: Job, function: Function) -> Any:
        event = job.event if job.event is not None else event_from_message(job.msg)
        return function.call(event, self.context)

    def _run_sync(self, job: Job, function: Function) -> None:
        """Worker thread: call the function and hand the outcome to the loop."""
        if job.done:  # answered as timed out while it waited for a worker
            return
        job.running = True
        token = current_function.set(function.name)
        try:
            response = respond(function, lambda: self._invoke(job, function))
        finally:
            current_function.reset(token)
        # One loop wake-up serves every result that completed meanwhile.
        self._completed.append((job, response))
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain_completed)

    def _drain_completed(self) -> None:
        self._wake_pending = False  # before draining: a result appended later wakes us again
        completed = self._completed
        while completed:
            self._finish(*completed.popleft())
        self.publisher.flush()  # one write for the batch, without waiting a loop iteration

    async def _run_async(self, job: Job, function: Function) -> None:
        current_function.set(function.name)
        try:
            async with asyncio.timeout(job.route.config.timeout):
                event = job.event if job.event is not None else event_from_message(job.msg)
                response = await respond_async(function, event, self.context)
        except TimeoutError:
            response = self._timeout_response(job)
        self._finish(job, response)
        self.publisher.flush()

    def _timeout_response(self, job: Job) -> Response:
        return error_body(504, f"function {job.route.function.name} timed out after {job.route.config.timeout:g} s")  # type: ignore[union-attr]

    def _expire(self, job: Job) -> None:
        if job.done:
            return
        if job.running and job.route.pool is not None:
            job.route.pool.stuck += 1
            log.warning("function %s still running after its %g s timeout; its thread stays busy until it returns",
                        job.route.function.name, job.route.config.timeout)  # type: ignore[union-attr]
        self._finish(job, self._timeout_response(job))

    # -- replying -----------------------------------------------------------------------------
    def _finish(self, job: Job, response: Response) -> None:
        if job.done:
            # A sync call that returned after its timeout was answered: its thread is free again.
            if job.route.pool is not None and job.running and job.route.pool.stuck > 0:
                job.route.pool.stuck -= 1
            log.info("function %s returned after its timeout; result discarded", job.route.config.handler)
            return
        job.done = True
        if job.timer is not None:
            job.timer.cancel()
        if job.route.config.thing is not None and response.status < 300 and job.route.function is not None:
            response = write_thing(self.things, job.route.config.thing, job.msg, response)
        if job.caller is not None:  # an HTTP call: answered there, nothing to publish or ack
            if not job.caller.done():  # done: the caller gave up waiting
                job.caller.set_result(response)
            job.route.stats.done(response, job.arrived)
            self._released_slot(job)
            return
        msg = job.msg
        out: Outbound | None = None
        if job.reply_to is not None:
            try:
                out = encode_reply(response, job.route.config.reply_format, job.reply_to, msg.qos, msg.correlation_data)
            except Exception as exc:  # e.g. a header that cannot be encoded
                out = encode_reply(error_body(500, f"reply could not be encoded: {exc}"), "json",
                                   job.reply_to, msg.qos, msg.correlation_data)
        else:
            log.debug("%s -> %d (no reply topic)", msg.topic, response.status)
        self.ledger.send(job, out)
        job.route.stats.done(response, job.arrived)

    def _released_slot(self, _held: Held) -> None:
        """The ledger is done with a request: it no longer counts as in flight."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        if self._paused and not self._closing and self.in_flight <= self._resume_at:
            self._paused = False
            self.publisher.resume()

    def stop_intake(self) -> None:
        """Take no new messages, for good (shutdown); in-flight ones still finish."""
        self._closing = True
        self.publisher.pause()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for every request to be answered and acknowledged."""
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False
