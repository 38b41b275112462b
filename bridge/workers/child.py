"""A worker process: imports the handlers, then runs the calls the daemon sends it.

    python -m bridge.workers.child FD

FD is this end of a Unix socket pair (see :mod:`bridge.workers.wire`).  The first frame is
``("start", config, specs, excluded, hostname, check_only)``.  The worker applies its memory
limit, imports each handler (reporting ``loading`` before each, so an import that kills the
process is blamed on its module), reports ``ready``, and then serves calls until the daemon
sends ``stop`` (finish what runs, then exit) or goes away (exit at once).

Functions run here exactly as in the daemon's ``thread`` mode (bridge.workers.local); their
logging and stderr go to the daemon's stderr, tagged with the function's name.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from typing import Any

from .. import logs, runtime
from ..config import BridgeConfig
from ..contract import Context, error_body
from ..functions import Function, Unavailable, load_functions
from ..iotstudio import client as api_client
from . import wire
from .crew import Channel, Crew
from .local import LocalRunner

log = logging.getLogger("bridge.workers")
STACK_SIZE = 2 * 1024 * 1024  # per thread, under a memory limit (the default 8 MiB counts in full)


def _die_with_parent() -> None:
    """Get SIGKILL if the daemon dies without stopping this worker (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() == 1:  # the daemon died before the line above ran
        os._exit(1)


def _limit_memory(config: BridgeConfig) -> None:
    limit = config.workers.memory_limit_mb
    if limit:
        # RLIMIT_DATA: heap and private writable memory (not the address space, which glibc's
        # per-thread malloc arenas reserve generously).  Past it allocations raise MemoryError.
        threading.stack_size(STACK_SIZE)
        resource.setrlimit(resource.RLIMIT_DATA, (limit << 20, limit << 20))


def _load(channel: Channel, config: BridgeConfig, specs: list[str], excluded: dict[str, str]
          ) -> dict[str, Function]:
    runtime.configure(config)
    api_client.configure(config.iot_studio)  # what api() in a function uses: [iot_studio]'s settings
    loaded = load_functions(config.handlers_dir, [s for s in specs if s not in excluded],
                            loading=lambda spec: channel.send("loading", spec))
    report: list[tuple[Any, ...]] = []
    functions: dict[str, Function] = {}
    for spec in specs:
        item = loaded.get(spec) or Unavailable(spec, excluded.get(spec, "not loaded"))
        if isinstance(item, Function):
            functions[spec] = item
            info = item.info
            report.append(("ok", spec, info.is_async, info.style, info.source_file or ""))
        else:
            report.append(("unavailable", spec, item.reason))
    channel.send("ready", report)
    return functions


def _watch_loop(channel: Channel, runner: LocalRunner) -> None:
    """Tell the daemon when a function blocks the async loop (it sends this worker no more)."""
    told = False
    while True:
        time.sleep(0.25)
        blocked = runner.blocked_for()
        if blocked > 1.0 and not told:
            channel.send("blocked", round(blocked, 1))
        told = blocked > 1.0


def serve(sock: socket.socket) -> int:
    channel = Channel(sock)
    frames = channel.receive()
    if not frames or frames[0][0] != "start":
        return 2
    _, config, specs, excluded, hostname, check_only = frames[0]
    logs.setup(config.logging.level, config.logging.function_level)
    _limit_memory(config)
    functions = _load(channel, config, specs, excluded)
    if check_only:
        return 0
    widths: dict[str, int] = {}
    for route in config.routes:
        if route.handler is not None:
            widths[route.handler] = widths.get(route.handler, 0) + route.concurrency

    runner = LocalRunner(Context(hostname), lambda call_id, response: channel.send(
        "result", call_id, wire.pack_response(response)))
    stopping = threading.Event()

    def handle(item: tuple[Any, ...]) -> None:
        if item[0] == "call":
            _, call_id, spec, event = item
            function = functions.get(spec)
            if function is None:  # the daemon sends only loaded functions; answer, never hang
                channel.send("result", call_id, wire.pack_response(
                    error_body(503, f"function {spec} is not loaded in this worker")))
            elif function.is_async:
                runner.submit(call_id, function, event, widths.get(spec, 1))
            else:
                runner.run_here(call_id, function, event)
        elif item[0] == "stop":
            stopping.set()

    if any(f.is_async for f in functions.values()):  # only they run on the loop it watches
        threading.Thread(target=_watch_loop, args=(channel, runner), name="watch-loop", daemon=True).start()
    Crew(channel, handle, sum(widths.values())).start()
    stopping.wait()
    # Answer every call read before the "stop" (also one another thread has taken but not
    # started yet) and write the results; the daemon kills us if it takes too long.
    while channel.unanswered or runner.running or channel.pending:
        time.sleep(0.02)
    return 0


def _first_to_go() -> None:
    """Under memory pressure (the unit's MemoryMax=) the kernel kills a worker, not the daemon."""
    with contextlib.suppress(OSError):
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")


def main(argv: list[str]) -> int:
    _die_with_parent()
    _first_to_go()
    # Ctrl-C in a terminal signals the whole process group: the daemon decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    code = serve(sock)
    with contextlib.suppress(Exception):
        api_client.shutdown()  # revokes the tokens functions fetched, as the daemon does in thread mode
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)  # not sys.exit: threads a function started must not keep the worker alive


if __name__ == "__main__":
    main(sys.argv[1:])
