"""Import every handler in a throwaway worker process, before anything runs them.

``iot-bridge check`` and the daemon in ``thread`` mode use it: a module that kills the process
at import (``os._exit``, a crash in a C extension) is then named and its route answers 503,
instead of the whole process ending without a word.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..config import BridgeConfig
from ..errors import BridgeError
from ..functions import FunctionInfo, Unavailable
from .process import WorkerProcess


def infos_from_report(report: Any) -> dict[str, FunctionInfo | Unavailable]:
    """A worker's ``ready`` report as the daemon's view of each function."""
    out: dict[str, FunctionInfo | Unavailable] = {}
    for item in report:
        if item[0] == "ok":
            _, spec, is_async, style, source = item
            out[spec] = FunctionInfo(spec, bool(is_async), str(style), source or None)
        else:
            out[item[1]] = Unavailable(item[1], item[2])
    return out


async def probe(config: BridgeConfig, hostname: str = "localhost") -> dict[str, FunctionInfo | Unavailable]:
    """What each route's handler is once imported, or why it cannot be (killing imports included)."""
    loop = asyncio.get_running_loop()
    specs = sorted({r.handler for r in config.routes if r.handler is not None})
    excluded: dict[str, str] = {}
    while True:
        ended: asyncio.Future[str] = loop.create_future()
        reports: list[Any] = []

        def frame(_w: WorkerProcess, item: tuple[Any, ...]) -> None:
            if item[0] == "ready" and len(item) == 2:
                reports.append(item[1])
            elif item[0] == "loading" and len(item) == 2:
                _w.loading = str(item[1])

        worker = WorkerProcess(loop, "check", frame, lambda _w, how: ended.set_result(how))
        worker.spawn(config, specs, excluded, hostname, check_only=True)
        try:
            how = await asyncio.wait_for(asyncio.shield(ended), config.workers.load_timeout)
        except TimeoutError:
            worker.kill()
            raise BridgeError(f"the handlers were not imported within {config.workers.load_timeout:g} s "
                              f"(workers.load_timeout): still importing {worker.loading or '?'}") from None
        if reports:
            infos = infos_from_report(reports[0])
            infos.update({spec: Unavailable(spec, reason) for spec, reason in excluded.items()})
            return infos
        if worker.loading is None or worker.loading in excluded:
            raise BridgeError(f"the process importing the handlers {how}")
        excluded[worker.loading] = f"importing {worker.loading} killed the process: it {how}"
