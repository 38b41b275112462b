"""``mode = "thread"``: functions run inside the daemon, for the smallest gateways.

Sync functions run on per-function threads, ``async def`` ones on an event loop of their own
(bridge.workers.local), never on the loop serving MQTT: a function that blocks stalls other
async functions, not the broker connections.  What this mode cannot do: stop a sync call past
its timeout (Python cannot stop a thread; it is answered 504 and its thread stays busy until
the call returns), contain a crash or a memory hog (they take the daemon with them), or use
more than one core.  Handlers are first imported in a throwaway process (bridge.workers.probe),
so one that kills the process at import is named and its route answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from .. import runtime
from ..config import BridgeConfig
from ..contract import Context, Event, Response, error_body
from ..functions import Function, FunctionInfo, Unavailable, load_functions
from . import ExecutorBase, Hooks
from .local import LocalRunner
from .probe import probe

log = logging.getLogger("bridge.workers")


class ThreadExecutor(ExecutorBase):
    """Runs calls on threads of the daemon; reports each start and outcome to the dispatcher."""

    mode = "thread"

    def __init__(self, loop: asyncio.AbstractEventLoop, hostname: str, hooks: Hooks) -> None:
        super().__init__(loop, hostname, hooks)
        self._runner = LocalRunner(Context(hostname), self._done)
        self._functions: dict[str, Function] = {}
        self._next: dict[str, Function] = {}
        self._widths: dict[str, int] = {}
        self._stuck: dict[str, int] = {}  # sync calls answered 504 whose thread is still busy
        self._abandoned: set[int] = set()  # ids of those jobs
        self._completed: deque[tuple[Any, Response]] = deque()  # from function threads
        self._wake_pending = False

    async def load(self, config: BridgeConfig, *, reload: bool = False) -> dict[str, FunctionInfo | Unavailable]:
        """Import the handlers (first in a throwaway process, then here, off the event loop)."""
        infos = await probe(config, self._hostname)
        safe = [spec for spec, info in infos.items() if isinstance(info, FunctionInfo)]

        def load() -> dict[str, Function | Unavailable]:
            runtime.configure(config)
            return load_functions(config.handlers_dir, safe, reload=reload)

        loaded = await self._loop.run_in_executor(None, load)
        self.prepare(config, loaded)
        infos.update({spec: f.info if isinstance(f, Function) else f for spec, f in loaded.items()})
        return infos

    def prepare(self, config: BridgeConfig, loaded: dict[str, Function | Unavailable]) -> None:
        """Take functions already imported in this process; :meth:`commit` puts them to work."""
        self._next = {spec: f for spec, f in loaded.items() if isinstance(f, Function)}
        self._widths = {}
        for route in config.routes:
            if route.handler is not None:
                self._widths[route.handler] = self._widths.get(route.handler, 0) + route.concurrency

    def commit(self) -> None:
        self._functions = self._next

    def submit(self, job: Any, spec: str, event: Event) -> None:
        function = self._functions.get(spec)
        width = self._widths.get(spec, 1)
        stuck = self._stuck.get(spec, 0)
        if function is None or stuck >= width:
            reason = "is not loaded" if function is None else "is busy: every thread is stuck in a timed-out call"
            self._on_result(job, error_body(503, f"function {spec} {reason}"))
            return
        self._on_start(job)
        # Stuck threads do not count against the route's concurrency: the pool grows past them.
        self._runner.submit(job, function, event, width + stuck)

    def flush(self) -> None:
        pass  # calls start on submit

    def abandon(self, job: Any) -> None:
        function = self._functions.get(job.route.config.handler)
        if function is not None and function.is_async:
            self._runner.cancel(job)
            return
        spec = job.route.config.handler
        self._stuck[spec] = self._stuck.get(spec, 0) + 1
        self._abandoned.add(id(job))
        log.warning("function %s still running after its %g s timeout; its thread stays busy until it returns",
                    spec, job.route.config.timeout)

    def _done(self, job: Any, response: Response) -> None:
        """On a function thread: hand the outcome to the event loop (one wake-up per batch)."""
        self._completed.append((job, response))
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._wake_pending = False  # before draining: a result appended later wakes us again
        completed = self._completed
        while completed:
            job, response = completed.popleft()
            if id(job) in self._abandoned:
                self._abandoned.discard(id(job))
                spec = job.route.config.handler
                self._stuck[spec] -= 1
                log.info("function %s returned after its timeout; result discarded", spec)
                continue
            self._on_result(job, response)
        self._flush()

    async def close(self, grace: float = 5.0) -> None:
        self._runner.close()

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": "daemon", "pid": 0, "state": "ready", "calls": self._runner.running}]
