"""``mode = "process"``: functions run in a supervised pool of worker processes.

The daemon runs no user code.  ``workers.processes`` workers import the handlers at start;
each call goes to the ready worker with the fewest calls running.  What can go wrong, and
what the pool does (docs/reliability.md has the figures):

* a worker dies (exit, signal, OOM kill, killed from outside): each call it was running is
  answered 500 with how it died (``function sum was killed by signal 11 (SIGSEGV)``); it is
  replaced; calls on other workers go on;
* a call outlives its timeout (the dispatcher answers 504): its worker takes no more calls and
  a replacement starts; the worker is killed as soon as its other calls are over, so runaway
  calls never pile up;
* a function blocks a worker's async loop: the worker says so and is retired the same way;
* an import kills the worker: the module is blamed, its route answers 503, the rest load.

A reload (SIGHUP) starts a new generation of workers with the new code; the old ones finish
their calls, then exit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import Any

from ..config import BridgeConfig
from ..contract import Event, error_body
from ..errors import BridgeError
from ..functions import FunctionInfo, Unavailable
from ..stats import worker_restarted
from . import ExecutorBase, Hooks, wire
from .probe import infos_from_report
from .process import WorkerProcess

log = logging.getLogger("bridge.workers")

MAX_LOAD_ATTEMPTS = 5  # deaths of one worker while loading, not blamed on a module, before giving up


class Generation:
    """The workers serving one configuration."""

    def __init__(self, number: int, config: BridgeConfig) -> None:
        self.number = number
        self.config = config
        self.specs = sorted({r.handler for r in config.routes if r.handler is not None})
        self.excluded: dict[str, str] = {}  # spec -> why it is not loaded (its import killed a worker)
        self.infos: dict[str, FunctionInfo | Unavailable] | None = None
        self.workers: list[WorkerProcess] = []
        self.loaded = asyncio.Event()
        self.failures = 0
        self.import_deaths: dict[str, int] = {}  # spec -> workers that died while importing it


class ProcessExecutor(ExecutorBase):
    """Runs calls in worker processes; reports each start and outcome to the dispatcher."""

    mode = "process"

    def __init__(self, loop: asyncio.AbstractEventLoop, hostname: str, hooks: Hooks) -> None:
        super().__init__(loop, hostname, hooks)
        self._numbers = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._current: Generation | None = None
        self._next: Generation | None = None
        self._waiting: deque[tuple[Any, str, Event]] = deque()  # no worker ready yet
        self._deaths: deque[float] = deque(maxlen=8)
        self._closing = False
        self._alive: set[WorkerProcess] = set()  # every worker not yet gone, retiring ones too

    # -- loading ------------------------------------------------------------------------------
    async def load(self, config: BridgeConfig, *, reload: bool = False) -> dict[str, FunctionInfo | Unavailable]:
        """Start a generation of workers for ``config`` and wait until each has imported the
        handlers; :meth:`commit` puts it to work."""
        gen = Generation(next(self._numbers), config)
        self._next = gen
        for i in range(config.workers.processes):
            self._spawn(gen, i)
        timeout = config.workers.load_timeout
        try:
            await asyncio.wait_for(gen.loaded.wait(), timeout)
        except TimeoutError:
            stuck = sorted({w.loading for w in gen.workers if w.loading})
            self._drop(gen)
            raise BridgeError(f"the workers did not import the handlers within {timeout:g} s (workers.load_timeout)"
                              + (f": still importing {', '.join(stuck)}" if stuck else "")) from None
        if gen.infos is None:
            self._drop(gen)
            raise BridgeError("worker processes cannot start: " + gen.excluded.get("", "see the log"))
        return gen.infos

    def _drop(self, gen: Generation) -> None:
        """A generation that will never serve (its load failed): stop its workers."""
        if self._next is gen:
            self._next = None
        for worker in gen.workers:
            if worker.state != "gone":
                worker.state = "retiring"  # its end is expected: nothing replaces it
                worker.kill()

    def commit(self) -> None:
        """Serve new calls with the generation :meth:`load` prepared; the old one winds down."""
        old, self._current, self._next = self._current, self._next, None
        if old is not None:
            for worker in old.workers:
                self._retire(worker, graceful=True)
        self._drain_waiting()

    def _spawn(self, gen: Generation, slot: int) -> WorkerProcess:
        worker = WorkerProcess(self._loop, f"{gen.number}.{slot}", self._frame, self._exit, self._flush)
        worker.generation = gen  # type: ignore[attr-defined]
        worker.slot = slot  # type: ignore[attr-defined]
        if slot < len(gen.workers):
            gen.workers[slot] = worker
        else:
            gen.workers.append(worker)
        try:
            worker.spawn(gen.config, gen.specs, gen.excluded, self._hostname)
        except OSError as exc:  # no process could be made (memory, process ids): try again later
            worker.state = "gone"
            log.error("worker %s cannot be started: %s; trying again", worker.name, exc)
            self._replace(gen, worker)
            return worker
        self._alive.add(worker)
        return worker

    # -- serving ------------------------------------------------------------------------------
    def submit(self, job: Any, spec: str, event: Event) -> None:
        worker = self._pick()
        if worker is None:
            self._waiting.append((job, spec, event))
            return
        self._send(worker, job, spec, event)

    def _pick(self) -> WorkerProcess | None:
        gen = self._current
        if gen is None:
            return None
        best: WorkerProcess | None = None
        for worker in gen.workers:
            if worker.state == "ready" and (best is None or len(worker.calls) < len(best.calls)):
                best = worker
        return best

    def _send(self, worker: WorkerProcess, job: Any, spec: str, event: Event) -> None:
        call_id = next(self._call_ids)
        job.call = (worker, call_id)
        worker.calls[call_id] = job
        worker.send("call", call_id, spec, event)
        self._on_start(job)

    def _drain_waiting(self) -> None:
        while self._waiting:
            worker = self._pick()
            if worker is None:
                return
            self._send(worker, *self._waiting.popleft())

    def flush(self) -> None:
        for gen in (self._current, self._next):
            if gen is not None:
                for worker in gen.workers:
                    worker.flush()

    def abandon(self, job: Any) -> None:
        """The call timed out (already answered 504): retire the worker running it."""
        if job.call is None:
            return  # its result came first (a timer starts only once a call is sent)
        worker, call_id = job.call
        job.call = None
        worker.calls.pop(call_id, None)
        if worker.state in ("ready", "starting"):
            log.warning("worker %s (pid %d) is replaced: a call to %s outlived its timeout",
                        worker.name, worker.pid, job.route.config.handler)
        self._retire(worker, graceful=False)
        if not worker.calls:
            # Also when it was retiring already (a reload, a blocked loop, another call that
            # timed out on it): nothing else runs there, and this call may run for ever.
            worker.kill()

    # -- frames and ends ----------------------------------------------------------------------
    def _frame(self, worker: WorkerProcess, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "result" and len(item) == 3:
            job = worker.calls.pop(item[1], None)
            if job is not None:  # else answered already (it timed out)
                job.call = None
                try:
                    response = wire.unpack_response(item[2])
                except wire.WireError as exc:
                    response = error_body(500, f"function {job.route.config.handler} returned a result the bridge "
                                               f"could not read: {exc}")
                self._on_result(job, response)
            if worker.state == "retiring" and not worker.calls:
                worker.kill()
        elif kind == "loading" and len(item) == 2:
            worker.loading = str(item[1])
        elif kind == "ready" and len(item) == 2:
            self._ready(worker, item[1])
        elif kind == "blocked":
            log.warning("worker %s (pid %d): a function blocked its async loop for %s s; the worker is replaced",
                        worker.name, worker.pid, item[1] if len(item) > 1 else "?")
            self._retire(worker, graceful=False)

    def _ready(self, worker: WorkerProcess, report: Any) -> None:
        gen: Generation = worker.generation  # type: ignore[attr-defined]
        worker.loading = None
        if worker.state != "starting":
            return
        worker.state = "ready"
        if gen.infos is None:
            gen.infos = infos_from_report(report)
            for spec, reason in gen.excluded.items():
                if spec:
                    gen.infos[spec] = Unavailable(spec, reason)
        if all(w.state != "starting" for w in gen.workers) or gen is self._current:
            gen.loaded.set()
        if gen is self._current:
            self._drain_waiting()

    def _exit(self, worker: WorkerProcess, how: str) -> None:
        self._alive.discard(worker)
        gen: Generation = worker.generation  # type: ignore[attr-defined]
        calls, worker.calls = worker.calls, {}
        was = worker.state
        # Before its calls are answered: each answer may start a waiting call, which must not
        # be sent here (it would be lost with the socket and answered 504 at its timeout).
        worker.state = "gone"
        for job in calls.values():
            job.call = None
            spec = job.route.config.handler
            self._on_result(job, error_body(500, f"function {spec} {how}", kind="WorkerDied"))
        if calls:
            log.error("worker %s (pid %d) %s with %d call(s) running; each is answered 500",
                      worker.name, worker.pid, how, len(calls))
            self._flush()
        if self._closing or was == "retiring" or gen not in (self._current, self._next):
            return
        if worker.loading is not None:
            # Its import killed it, or something else did meanwhile (an OOM kill, an operator):
            # the second time the module is blamed, and the others are loaded without it.
            spec = worker.loading
            deaths = gen.import_deaths[spec] = gen.import_deaths.get(spec, 0) + 1
            if deaths < 2:
                log.warning("worker %s (pid %d) %s while importing %s; trying again", worker.name, worker.pid, how, spec)
            else:
                gen.excluded[spec] = f"importing {spec} killed the process: it {how}"
                log.error("routes with handler %s answer 503: %s", spec, gen.excluded[spec])
        elif was == "starting":
            gen.failures += 1
            if gen.infos is None and gen.failures >= MAX_LOAD_ATTEMPTS:  # a start or reload gives up
                gen.excluded[""] = f"a worker {how} {gen.failures} times while starting"
                gen.loaded.set()
                return
            if gen.infos is not None:  # serving: replace it however often (with the crash-loop backoff)
                log.warning("worker %s (pid %d) %s while starting; starting another", worker.name, worker.pid, how)
        else:
            log.warning("worker %s (pid %d) %s; starting a replacement", worker.name, worker.pid, how)
        self._replace(gen, worker)

    def _retire(self, worker: WorkerProcess, *, graceful: bool) -> None:
        """No more calls for ``worker``; replace it in the current generation; stop it."""
        gen: Generation = worker.generation  # type: ignore[attr-defined]
        if worker.state in ("retiring", "gone"):
            return
        worker.state = "retiring"
        if not graceful and not self._closing and gen in (self._current, self._next):
            self._replace(gen, worker)
        if graceful:
            worker.stop()  # finishes its calls, then exits
        elif not worker.calls:
            worker.kill()

    def _replace(self, gen: Generation, worker: WorkerProcess) -> None:
        self.restarts += 1
        worker_restarted()  # iot_bridge_worker_restarts_total
        now = time.monotonic()
        self._deaths.append(now)
        # Many replacements in a short time (a crash loop): slow down, never stop.
        recent = sum(1 for t in self._deaths if now - t < 10)
        delay = 0.0 if recent <= 3 else min(0.1 * 2 ** (recent - 3), 5.0)
        slot: int = worker.slot  # type: ignore[attr-defined]
        self._loop.call_later(delay, self._respawn, gen, slot)

    def _respawn(self, gen: Generation, slot: int) -> None:
        if not self._closing and gen in (self._current, self._next):
            self._spawn(gen, slot)

    # -- the end ------------------------------------------------------------------------------
    async def close(self, grace: float = 5.0) -> None:
        """Stop every worker: finish what runs within ``grace`` seconds, then kill."""
        self._closing = True
        workers = list(self._alive)  # retiring ones too: a runaway call's worker is killed here
        for worker in workers:
            worker.stop()
        deadline = self._loop.time() + grace
        while any(w.state != "gone" for w in workers) and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        for worker in workers:
            worker.kill()
        while any(w.state != "gone" for w in workers):
            await asyncio.sleep(0.01)

    def describe(self) -> list[dict[str, Any]]:
        """The workers, for logs and the status page."""
        gen = self._current
        return [] if gen is None else [{"name": w.name, "pid": w.pid, "state": w.state, "calls": len(w.calls)}
                                       for w in gen.workers]

