"""The HTTP server: an aiohttp application on the bridge's event loop.

=====================================  ==============================================
``GET /``                              the status page (bridge.http.page)
``GET /__/health``                     200 ``OK`` or 503 and a reason (bridge.http.health)
``GET /metrics``                       Prometheus text format (bridge.http.metrics)
``* /invoke/<function>[/path]``        run a function, answer its result (bridge.http.invoke)
``* /async-invoke/<function>[/path]``  202 now, the result to ``X-Callback-Url``
=====================================  ==============================================

Request logs are off (they would name every caller's path and query); errors are logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

from aiohttp import web

from ..config import BridgeConfig
from ..stats import Stats
from . import health, invoke, metrics, page
from .callback import Callbacks

if TYPE_CHECKING:
    from ..dispatch import Dispatcher, Route
    from ..iotstudio.automation import ThingWriter
    from ..link import BrokerLink
    from ..workers import Executor

log = logging.getLogger("bridge.http")


class BridgeView(Protocol):
    """What the HTTP side reads from the running bridge (bridge.daemon.Bridge)."""

    config: BridgeConfig
    routes: list["Route"]
    dispatcher: "Dispatcher | None"
    link: "BrokerLink | None"
    things: "ThingWriter | None"
    executor: "Executor | None"
    stats: Stats
    phase: str  # "starting" until READY, "serving", "stopping" from SIGTERM on


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """Serve the endpoints for ``view`` on ``config.http.listen``."""

    def __init__(self, view: BridgeView, token: str | None) -> None:
        self.view = view
        self.token = token  # the bearer token /invoke and /async-invoke require, if any
        self.counters = metrics.register(view)
        self.callbacks = Callbacks(view.config.http, self.counters.callback)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def app(self) -> web.Application:
        # /invoke reads each body with limits.max_payload as it is then (reloadable); this
        # bound is aiohttp's for every other request.
        app = web.Application(client_max_size=self.view.config.limits.max_payload + 1,
                              middlewares=[self._count])
        app["view"], app["server"] = self.view, self
        app.router.add_get("/", page.status_page, name="status")
        app.router.add_get("/__/health", health.health, name="health")
        app.router.add_get("/metrics", metrics.metrics, name="metrics")
        app.router.add_route("*", r"/invoke/{function}{path:(/.*)?}", invoke.invoke, name="invoke")
        app.router.add_route("*", r"/async-invoke/{function}{path:(/.*)?}", invoke.async_invoke,
                             name="async_invoke")
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = request.match_info.route.name or "other"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.counters.request(endpoint, exc.status)
            raise
        except Exception:
            self.counters.request(endpoint, 500)
            log.exception("HTTP %s %s failed", request.method, request.path)
            raise
        self.counters.request(endpoint, response.status)
        return response

    async def start(self) -> bool:
        """Listen; on failure (e.g. the port is taken) log why and return False: MQTT serves on."""
        address = self.view.config.http.address
        if address is None:
            return False
        host, port = address
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            log.error("http.listen: cannot listen on %s: %s; HTTP is off, MQTT serves on",
                      self.view.config.http.listen, exc)
            return False
        self._runner = runner
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        log.info("HTTP on %s (status page; /__/health, /metrics, /invoke/<function>%s)", self.url,
                 "; invoke needs a bearer token" if self.token else "")
        return True

    async def close(self, grace: float) -> None:
        """Stop listening; callbacks in progress get up to ``grace`` seconds."""
        await self.callbacks.close(grace)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
