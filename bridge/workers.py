"""A small pool of daemon threads for synchronous functions.

Not :class:`concurrent.futures.ThreadPoolExecutor`: its threads are joined at interpreter
exit, so one function stuck in an endless loop would keep the daemon from ever exiting after
SIGTERM.  Python cannot stop a running thread; a timed-out call keeps its thread until it
returns, and the pool counts it as stuck.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("bridge.workers")


class WorkerPool:
    """Run callables on up to ``size`` daemon threads, started on demand."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # submitted and not yet finished
        self._lock = threading.Lock()
        self.stuck = 0  # calls answered as timed out that still occupy a thread (loop thread only)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"fn-{self.name}-{len(self._threads)}", daemon=True
                )
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
