"""Message -> route -> Event -> function -> reply -> acknowledgement.

Everything here runs on the bridge's event loop thread except :meth:`Dispatcher._run_sync`,
which runs on a route's worker thread and hands its outcome back with
``call_soon_threadsafe``.  The transport is the only thing that talks to the broker.

Delivery rules:

* A QoS >= 1 request is acknowledged only after its function finished and its reply was
  handed to the broker (for a QoS >= 1 reply: after the broker acknowledged the reply).
  A bridge killed before that gets the request redelivered.
* Every request is answered, also when the function raises, times out or returns garbage,
  and then acknowledged: a poison message is never redelivered in a loop.
* At most ``limits.max_in_flight`` requests are in flight at once; at the bound the link
  stops reading requests, and the rest wait in the broker (bridge.link).
* Replies go out on the reply connection, acknowledgements on the request connection.  When
  the request connection resumes its session the broker redelivers every unacknowledged QoS 1
  request; work in progress then acknowledges only once that copy has arrived, so the copy is
  never taken for a new request (and run again).
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
from .iotstudio.automation import ThingSink, write_thing
from .functions import Function, Unavailable, respond, respond_async
from .logs import current_function
from .message import Inbound, Outbound
from .replystore import ReplyStore, request_key
from .routing import ReplyPolicy, matches
from .workers import WorkerPool

log = logging.getLogger("bridge.dispatch")


class Publisher(Protocol):
    """What the dispatcher needs from the broker link (bridge.link.BrokerLink)."""

    def publish(self, out: Outbound) -> int | None: ...  # mid to await, or None when handed over
    def ack(self, mid: int, qos: int) -> None: ...
    def pause(self) -> None: ...  # stop taking requests
    def resume(self) -> None: ...
    def flush(self) -> None: ...  # write queued packets now
    @property
    def can_publish(self) -> bool: ...  # the reply connection is up
    @property
    def can_ack(self) -> bool: ...  # the request connection is up


@dataclass(eq=False)
class Route:
    """A configured route with its loaded function (None: a no-code Thing route)."""

    index: int
    config: RouteConfig
    function: Function | Unavailable | None
    pool: WorkerPool | None = None


@dataclass(eq=False, slots=True)
class Job:
    msg: Inbound
    route: Route
    reply_to: str | None
    done: bool = False
    running: bool = False
    timer: asyncio.TimerHandle | None = None
    stored: str | None = None  # key of its reply in the reply store
    orphaned: bool = False  # its packet id now names another message: never acknowledge
    ack_due: bool = False  # finished, to be acknowledged when the broker's copy arrives
    copy_due: bool = False  # the session resumed: the broker will redeliver this request


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
    _running: dict[int, Job] = field(default_factory=dict)  # request mid -> job (QoS >= 1)
    _awaiting: dict[int, Job] = field(default_factory=dict)  # reply mid -> job
    _paused: bool = False
    _closing: bool = False  # shutting down: intake stays stopped
    _completed: deque[tuple[Job, Response]] = field(default_factory=deque)  # from worker threads
    _wake_pending: bool = False
    _parked: list[tuple[Job, Outbound | None]] = field(default_factory=list)  # while disconnected
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()
        self._configure()

    def _configure(self) -> None:
        """Derive the per-config state (at start and on every reload)."""
        self._max = self.config.limits.max_in_flight
        self._resume_at = max(self._max * 3 // 4, self._max - 1)
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
        if msg.qos and msg.mid in self._running:
            job = self._running[msg.mid]
            if msg.dup and msg.topic == job.msg.topic and msg.payload == job.msg.payload:
                # The broker redelivered a message we are still working on (after a reconnect):
                # the running job acknowledges this mid when it finishes, or now if it has.
                job.copy_due = False
                if job.ack_due:
                    self._settle(job)
                return
            # Another message with the packet id of running work: the broker lost its state (a
            # restart from an older snapshot). The old job must not acknowledge this one.
            self._running.pop(msg.mid).orphaned = True
        if self._closing:
            return  # shutting down: not acknowledged, so the broker keeps it for the next start
        if self._log_payloads:
            log.info("message on %s (qos %d, %d bytes): %r", msg.topic, msg.qos, len(msg.payload), msg.payload[:1024])
        route = self.route_for(msg)
        if route is None:
            log.warning("no route for topic %r; acknowledged and dropped", msg.topic)
            self._ack(msg)
            return
        job = Job(msg, route, self._reply_topic(msg, route))
        self._take(job)
        if self.replies and msg.qos:
            # Redelivered after a restart, answered before the broker came back: reuse the reply.
            key = request_key(msg)
            stored = self.replies.take(key)
            if stored is not None:
                job.done, job.stored = True, key
                self._send(job, stored)
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
        self._idle.clear()
        if job.msg.qos:
            self._running[job.msg.mid] = job
        if self.in_flight >= self._max and not self._paused:
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
        self._send(job, out)

    def _send(self, job: Job, out: Outbound | None) -> None:
        """Publish the reply (if any), then acknowledge; park both while replies cannot go out."""
        if out is not None and not self.publisher.can_publish:
            # An ack queued now would be lost with the connection, and paho would keep a QoS
            # >= 1 reply only in memory: park it, durably when the request will be redelivered.
            self._parked.append((job, out))
            log.info("reply for %s parked until the broker is back", job.msg.topic)
            if job.msg.qos and self.replies is not None and job.stored is None:
                job.stored = request_key(job.msg)
                self.replies.save(job.stored, out)
            return
        mid = self.publisher.publish(out) if out is not None else None
        if mid is not None and job.msg.qos:
            self._awaiting[mid] = job
        else:
            self._done(job)

    def connected(self) -> None:
        """The transport (re)connected: parked replies go out, then their requests are acked."""
        parked, self._parked = self._parked, []
        if parked:
            log.info("publishing %d repl(ies) made while the broker was away", len(parked))
        for job, out in parked:
            self._send(job, out)

    def published(self, mid: int) -> None:
        """The broker acknowledged reply ``mid``: acknowledge its request."""
        job = self._awaiting.pop(mid, None)
        if job is not None:
            self._done(job)

    def _done(self, job: Job) -> None:
        if job.msg.qos and self._running.get(job.msg.mid) is job:
            if self.publisher.can_ack and not job.copy_due:
                del self._running[job.msg.mid]
            else:
                job.ack_due = True  # acknowledged when its copy arrives, see handle()
        if not job.orphaned and not job.ack_due:
            self._ack(job.msg)
        if job.stored is not None and self.replies is not None:
            self.replies.forget(job.stored)
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        if self._paused and not self._closing and self.in_flight <= self._resume_at:
            self._paused = False
            self.publisher.resume()

    def _settle(self, job: Job) -> None:
        """Acknowledge finished work whose acknowledgement was deferred (``ack_due``)."""
        del self._running[job.msg.mid]
        self._ack(job.msg)

    def _ack(self, msg: Inbound) -> None:
        if msg.qos:
            self.publisher.ack(msg.mid, msg.qos)

    def stop_intake(self) -> None:
        """Take no new messages, for good (shutdown); in-flight ones still finish."""
        self._closing = True
        self.publisher.pause()

    def session_lost(self) -> None:
        """The broker started a fresh session: pending packet ids now name other messages.

        Work in progress still gets its reply, but must never acknowledge its old id.
        """
        for job in self._running.values():
            job.orphaned = True
        self._running.clear()

    def session_resumed(self) -> None:
        """The request connection resumed its session after a drop: the broker now redelivers
        every QoS 1 request not yet acknowledged, each with the packet id it had.  QoS 2 ones
        are not sent again (the broker resends only its PUBREL): their ids stay valid."""
        for job in list(self._running.values()):
            if job.msg.qos == 1:
                job.copy_due = True
            elif job.ack_due:
                self._settle(job)

    def released(self, mid: int) -> None:
        """The broker resent PUBREL for QoS 2 request ``mid``, delivered before the resume:
        complete it if its work is done (the PUBCOMP was lost with the old connection)."""
        job = self._running.get(mid)
        if job is None:
            self.publisher.ack(mid, 2)
        elif job.ack_due:
            self._settle(job)
        # else: still running; it completes when its reply is out

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for every request to be answered and acknowledged."""
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False
