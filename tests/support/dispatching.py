"""A dispatcher with real functions on real threads (``thread`` mode), and a recorder in place of
the broker link: for tests that need exact control of packet ids and timing."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import BridgeConfig
from bridge.daemon import build_routes
from bridge.dispatch import Dispatcher
from bridge.functions import Function, Unavailable, load_functions
from bridge.workers import Hooks
from bridge.workers.threads import ThreadExecutor


def load(config: BridgeConfig) -> dict[str, Function | Unavailable]:
    """Import the handlers of ``config`` in this process."""
    return load_functions(config.handlers_dir, [r.handler for r in config.routes if r.handler])


def dispatcher(config: BridgeConfig, recorder: Any, functions: dict[str, Function | Unavailable] | None = None,
               **options: Any) -> Dispatcher:
    """A dispatcher for ``config`` on the running loop (call from a coroutine)."""
    loop = asyncio.get_running_loop()
    functions = load(config) if functions is None else functions
    ref: list[Dispatcher] = []
    executor = ThreadExecutor(loop, "localhost", Hooks(started=lambda job: ref[0].started(job),
                                                       finished=lambda job, response: ref[0].completed(job, response),
                                                       flush=lambda: ref[0].publisher.flush()))
    executor.prepare(config, functions)
    executor.commit()
    infos = {spec: f.info if isinstance(f, Function) else f for spec, f in functions.items()}
    ref.append(Dispatcher(config, build_routes(config, infos), recorder, loop, executor, **options))
    return ref[0]
