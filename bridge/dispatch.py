"""Message -> route -> Event -> function -> reply.

Everything here runs on the bridge's event loop thread except :meth:`Dispatcher._run_sync`,
which runs on a route's worker thread and hands its outcome back with
``call_soon_threadsafe``.  When replies are published and requests acknowledged is the
business of :mod:`bridge.delivery`; the transport is the only thing that talks to the broker.

* Every request is answered, also when the function raises, times out or returns garbage,
  and then acknowledged: a poison message is never redelivered in a loop.
* At most ``limits.max_in_flight`` requests, and about ``limits.max_in_flight_bytes`` of
  their payloads, are in flight at once; at either bound the link stops reading requests, and
  the rest wait in the broker (bridge.link).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codec import check_request, encode_reply, event_from_message
from .config import BridgeConfig, RouteConfig
from .contract import Context, Response, error_body
from .delivery import Held, Ledger, Link
from .iotstudio.automation import ThingSink, write_thing
from .functions import Function, Unavailable, respond, respond_async
from .logs import current_function
from .message import Inbound, Outbound
from .replystore import ReplyStore
from .routing import ReplyPolicy, matches
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


@dataclass(eq=False, slots=True)
class Job(Held):
    route: Route = None  # type: ignore[assignment]  (always given)
    reply_to: str | None = None
    done: bool = False
    running: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Dispatcher:
    config: BridgeConfig
    routes: list[Route]
    publisher: Publisher
    loop: asyncio.AbstractEventLoop
    context: Context = field(default_factory=Context)
    things: ThingSink | None = None
    replies: ReplyStore | None = None
    in_flight: int = 0
    in_flight_bytes: int = 0  # payload bytes of the requests in flight
    peak_in_flight: int = 0  # the most requests ever in flight at once
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
        self._max_bytes = self.config.limits.max_in_flight_bytes
        self._reply_policy = ReplyPolicy(self.config.replies.allowed_topics, [r.config.topic for r in self.routes])
        self._log_payloads = self.config.logging.log_payloads

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
            self.ledger.ignore(msg)
            return
        job = Job(msg, route=route, reply_to=self._reply_topic(msg, route))
        self._take(job)
        stored = self.ledger.hold(job)
        if stored is not None:
            # Redelivered after a restart, answered before the broker came back: reuse the reply.
            job.done = True
            self.ledger.send(job, stored)
            return
        rejection = check_request(msg, self.config.limits.max_payload)
        function = route.function
        if rejection is not None:
            self._finish(job, rejection)
        elif isinstance(function, Unavailable):
            self._finish(job, error_body(503, f"function {function.name} is unavailable: {function.reason}"))
        elif function is None:  # a no-code Thing route: the payload is the update
            self._finish(job, write_thing(self.things, route.config.thing, msg, None))
        elif function.is_async:
            job.running = True
            self.loop.create_task(self._run_async(job, function))
        else:
            assert route.pool is not None
            if route.pool.stuck >= route.pool.size:
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
            log.warning("%s %r %s; no reply published", "response topic" if requested else "reply topic",
                        topic, verdict)
            return None
        return topic

    def _take(self, job: Job) -> None:
        self.in_flight += 1
        self.in_flight_bytes += len(job.msg.payload)
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        self._idle.clear()
        if (self.in_flight >= self._max or self.in_flight_bytes >= self._max_bytes) and not self._paused:
            self._paused = True
            self.publisher.pause()

    # -- running ------------------------------------------------------------------------------
    def _invoke(self, job: Job, function: Function) -> Any:
        event = event_from_message(job.msg)
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
                response = await respond_async(function, event_from_message(job.msg), self.context)
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

    def _released_slot(self, held: Held) -> None:
        """The ledger is done with a request: it no longer counts as in flight."""
        self.in_flight -= 1
        self.in_flight_bytes -= len(held.msg.payload)  # a copy taken meanwhile has the same payload
        if self.in_flight == 0:
            self._idle.set()
        if (self._paused and not self._closing and self.in_flight <= self._resume_at
                and self.in_flight_bytes < self._max_bytes):
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
