"""Running loaded functions in this process: the one place that calls user code.

Used in a worker process (``mode = "process"``) and in the daemon itself (``mode = "thread"``).
Sync functions run on daemon threads, a small pool per function; ``async def`` functions run
on one event loop in a thread of its own, never on the loop that serves MQTT.  Each call's
outcome, whatever the function does, is a :class:`~bridge.contract.Response` handed to
``done(token, response)`` on the thread the call finished on.

Not :class:`concurrent.futures.ThreadPoolExecutor`: its threads are joined at interpreter exit,
so one function stuck in an endless loop would keep the process from ever exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any, Callable

from ..contract import Context, Event, Response
from ..functions import Function, respond, respond_async
from ..logs import current_function

log = logging.getLogger("bridge.workers")

Done = Callable[[Any, Response], None]
TICK = 0.2  # how often the async loop proves it is not blocked


class ThreadPool:
    """Run callables on up to ``size`` daemon threads, started on demand."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # submitted and not yet finished
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"fn-{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # a job's escape must not end the thread the pool counts on
                log.exception("worker job failed in pool %s", self.name)
            finally:
                with self._lock:
                    self._pending -= 1

    def shutdown(self) -> None:
        """Ask idle threads to exit; busy ones end when their call returns."""
        for _ in self._threads:
            self._queue.put(None)


class LocalRunner:
    """Calls functions in this process and reports each outcome to ``done``."""

    def __init__(self, context: Context, done: Done) -> None:
        self._context = context
        self._done = done
        self._pools: dict[str, ThreadPool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[Any, concurrent.futures.Future[None]] = {}
        self._tick = time.monotonic()
        self.running = 0  # calls started and not yet done (any thread)
        self._count_lock = threading.Lock()

    def submit(self, token: Any, function: Function, event: Event, width: int) -> None:
        """Start a call; ``width`` is how many calls of this function may run at once."""
        with self._count_lock:
            self.running += 1
        if function.is_async:
            loop = self._async_loop()
            future = asyncio.run_coroutine_threadsafe(self._run_async(token, function, event), loop)
            self._tasks[token] = future
            future.add_done_callback(lambda _f: self._async_ended(token))
            return
        pool = self._pools.get(function.name)
        if pool is None:
            pool = self._pools[function.name] = ThreadPool(function.name, width)
        pool.size = max(pool.size, width)
        pool.submit(self._run_sync, token, function, event)

    def run_here(self, token: Any, function: Function, event: Event) -> None:
        """Run a sync call on the calling thread (a worker process's own threads do)."""
        with self._count_lock:
            self.running += 1
        self._run_sync(token, function, event)

    def cancel(self, token: Any) -> None:
        """Cancel an async call (a timeout); a sync call cannot be stopped from outside."""
        future = self._tasks.pop(token, None)
        if future is not None:
            future.cancel()

    def blocked_for(self) -> float:
        """Seconds the async loop has been blocked by a function (0 when it is not)."""
        if self._loop is None or not self._tasks:
            return 0.0
        late = time.monotonic() - self._tick - TICK
        return late if late > TICK else 0.0

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    # -- the calls ----------------------------------------------------------------------------
    def _async_ended(self, token: Any) -> None:
        self._tasks.pop(token, None)
        with self._count_lock:
            self.running -= 1

    def _run_sync(self, token: Any, function: Function, event: Event) -> None:
        reset = current_function.set(function.name)
        try:
            response = respond(function, lambda: function.call(event, self._context))
        finally:
            current_function.reset(reset)
        try:
            self._done(token, response)
        finally:  # counted until its result is handed on: a stopping worker waits for it
            with self._count_lock:
                self.running -= 1

    async def _run_async(self, token: Any, function: Function, event: Event) -> None:
        current_function.set(function.name)  # this task's own context
        try:
            response = await respond_async(function, event, self._context)
        except asyncio.CancelledError:
            return  # timed out: already answered
        self._done(token, response)

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=self._serve_loop, args=(loop,), name="fn-async", daemon=True).start()
            self._loop = loop
        return self._loop

    def _serve_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)

        def tick() -> None:
            self._tick = time.monotonic()
            loop.call_later(TICK, tick)

        loop.call_soon(tick)
        while True:
            try:
                loop.run_forever()
                return  # stopped by close()
            except BaseException:  # a task a function started raised KeyboardInterrupt or kin
                log.exception("a function's background task escaped; the loop keeps running")
