"""Where functions run: worker processes (the default) or threads of the daemon.

The dispatcher sees one :class:`Executor`, whichever ``[workers] mode`` is configured:

* ``process`` (bridge.workers.pool): a supervised pool of worker processes; the daemon runs
  no user code; crashes, hangs and memory hogs are contained and the worker replaced;
* ``thread`` (bridge.workers.threads): in the daemon, for the smallest gateways.

Both run a call the same way (bridge.workers.local), with the same contract and result rules
(bridge.contract): only where the call runs differs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..config import BridgeConfig
from ..contract import Event, Response
from ..functions import FunctionInfo, Unavailable


@dataclass(frozen=True, slots=True)
class Hooks:
    """What an executor tells the dispatcher, on the event loop thread."""

    started: Callable[[Any], None]  # a call really started: its timeout counts from now
    finished: Callable[[Any, Response], None]  # its outcome, once, whatever happened to it
    flush: Callable[[], None]  # a batch of outcomes was handed over: write the replies now


class ExecutorBase:
    """What both executors keep: the loop, the host name functions see, the hooks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hostname: str, hooks: Hooks) -> None:
        self._loop = loop
        self._hostname = hostname
        self._on_start = hooks.started
        self._on_result = hooks.finished
        self._flush = hooks.flush
        self.restarts = 0  # workers replaced after a death, a timeout or a blocked loop (process mode)


class Executor(Protocol):
    """Runs calls for the dispatcher, on the event loop thread, and tells it through :class:`Hooks`."""

    mode: str
    restarts: int

    async def load(self, config: BridgeConfig, *, reload: bool = False) -> dict[str, FunctionInfo | Unavailable]:
        """Import the handlers of ``config``; nothing serves them until :meth:`commit`."""

    def commit(self) -> None:
        """Serve new calls with what :meth:`load` imported last."""

    def submit(self, job: Any, spec: str, event: Event) -> None:
        """Call the function ``spec`` with ``event`` for ``job``."""

    def flush(self) -> None:
        """Hand calls submitted so far to where they run now, not at the next loop iteration."""

    def abandon(self, job: Any) -> None:
        """``job`` timed out and was answered: stop what runs it if that can be done."""

    async def close(self, grace: float = 5.0) -> None:
        """Stop: calls still running get ``grace`` seconds."""

    def describe(self) -> list[dict[str, Any]]:
        """Where calls run now (name, pid, state, calls), for logs and the status page."""


def make_executor(config: BridgeConfig, loop: asyncio.AbstractEventLoop, hostname: str, hooks: Hooks) -> Executor:
    if config.workers.mode == "thread":
        from .threads import ThreadExecutor

        return ThreadExecutor(loop, hostname, hooks)
    from .pool import ProcessExecutor

    return ProcessExecutor(loop, hostname, hooks)
