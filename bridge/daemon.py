"""The daemon: load functions, connect, serve until SIGTERM/SIGINT, shut down cleanly.

Shutdown: stop reading new messages (the subscriptions stay: the broker keeps queueing for
the persistent session), let in-flight requests finish and be acknowledged within
``limits.shutdown_grace`` seconds, then disconnect.  Requests still unfinished then are not
acknowledged, so the broker redelivers them on the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import swx

from . import runtime, secretstore, systemd
from .iotstudio import client as api_client
from .iotstudio.automation import ThingWriter
from .config import BridgeConfig, environment, load_config
from .contract import Context
from .dispatch import Dispatcher, Route
from .errors import BridgeError, ConfigError, HandlerLoadError
from .replystore import ReplyStore
from .stats import Stats
from .functions import Function, Unavailable, load_function, module_path, split_spec
from .http import HttpServer
from .link import BrokerLink
from .message import Subscription
from .workers import WorkerPool

log = logging.getLogger("bridge.daemon")


def check_handler_files(config: BridgeConfig) -> None:
    """Raise :class:`ConfigError` naming the first route whose handler module does not exist."""
    for i, route in enumerate(config.routes):
        if route.handler is None:
            continue
        module, _ = split_spec(route.handler)
        if module_path(config.handlers_dir, module) is None:
            raise ConfigError(
                f"routes[{i}].handler: no module {module!r} in {config.handlers_dir}",
                key=f"routes[{i}].handler",
            )


def load_routes(config: BridgeConfig, *, reload: bool = False) -> list[Route]:
    """Load every route's function. A module that fails to import makes its route answer 503."""
    check_handler_files(config)
    routes: list[Route] = []
    for i, rc in enumerate(config.routes):
        function: Function | Unavailable | None = None
        if rc.handler is not None:
            try:
                function = load_function(config.handlers_dir, rc.handler, reload=reload)
            except HandlerLoadError as exc:
                log.error("routes[%d] (%s): %s; the route answers 503", i, rc.topic, exc)
                function = Unavailable(rc.handler, str(exc))
        pool = None
        if isinstance(function, Function) and not function.is_async:
            pool = WorkerPool(rc.handler or f"route{i}", rc.concurrency)
        routes.append(Route(i, rc, function, pool))
    return routes


def _configure_packages(config: BridgeConfig) -> None:
    """Point what functions import (bridge.runtime, function.secrets, swx) at ``config``."""
    runtime.configure(config)
    secretstore.configure(config.secrets.dir)
    swx.configure(config.iot_studio.api_url)


class Bridge:
    """The running daemon: the broker link, one dispatcher, the loaded routes."""

    def __init__(self, config: BridgeConfig, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        _configure_packages(config)  # before functions import: they may read it
        self.password = self._broker_password()
        self.routes = load_routes(config)
        api = api_client.configure(config.iot_studio)
        self.things: ThingWriter | None = None
        if any(r.thing is not None for r in config.routes):
            self.things = ThingWriter(config.outbox, secretstore.current(), api)
            for route in config.routes:
                if route.thing is not None:
                    self.things.check(route.thing)
        self._stop = asyncio.Event()
        self.dispatcher: Dispatcher | None = None
        self.link: BrokerLink | None = None
        self.notifier = systemd.Notifier.from_environment()  # no-op unless run by systemd
        # -- the HTTP side (bridge.http) reads these --
        self.stats = Stats()
        self.phase = "starting"  # "serving" once READY, "stopping" from SIGTERM on
        self.http_token = self._secret("http.token_secret", config.http.token_secret)
        self.http: HttpServer | None = None

    def _broker_password(self) -> str | None:
        directory = secretstore.location()
        if directory is not None:
            for warning in secretstore.check_permissions(directory):
                log.warning("%s", warning)
        return self._secret("mqtt.password_secret", self.config.mqtt.password_secret)

    @staticmethod
    def _secret(key: str, name: str | None) -> str | None:
        """The secret a config ``key`` names, if it names one; :class:`ConfigError` if missing."""
        if name is None:
            return None
        store = secretstore.current()
        if store is None or not store.exists(name):
            raise ConfigError(f"{key}: no secret named {name!r}", key=key)
        return store.get(name)

    def reload(self) -> None:
        """SIGHUP: re-read the config and re-import the functions; the MQTT session stays.

        A config that does not validate (or names a missing module) is logged and ignored: the
        running configuration keeps serving.  ``[mqtt]`` changes need a restart.
        """
        if self.config_path is None or self.dispatcher is None or self.link is None:
            log.warning("reload requested but the bridge is not running from a config file")
            return
        with self.notifier.reloading("reloading configuration", "serving"):
            try:
                config = load_config(self.config_path)
                if config.mqtt != self.config.mqtt:
                    log.warning("[mqtt] changes take effect after a restart; the connection is kept as it is")
                    config = config.model_copy(update={"mqtt": self.config.mqtt})
                if config.http != self.config.http:
                    log.warning("[http] changes take effect after a restart")
                    config = config.model_copy(update={"http": self.config.http})
                if any(r.thing is not None for r in config.routes) and self.things is None:
                    raise ConfigError("Thing routes added by a reload need a restart")
                _configure_packages(config)
                routes = load_routes(config, reload=True)
            except BridgeError as exc:
                _configure_packages(self.config)
                log.error("reload failed; still serving the previous configuration: %s", exc)
                return
            old = self.routes
            self.config, self.routes = config, routes
            self.dispatcher.set_routes(config, routes)
            self.link.set_subscriptions([Subscription(r.config.topic, r.config.qos) for r in routes])
            for route in old:
                if route.pool is not None:
                    route.pool.shutdown()  # its queued calls still run first
            log.info("reloaded %s: %d route(s)", self.config_path, len(routes))

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self._stop.set()

    async def _announce_ready(self, link: BrokerLink) -> None:
        await link.ready()
        self.phase = "serving"  # /__/health answers 200 from now on, as READY=1 says
        log.info("ready: subscribed to %d topic filter(s)", len(self.routes))
        self.notifier.notify_ready(f"serving: subscribed to {len(self.routes)} topic filter(s)")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        env = environment()
        dispatcher_ref: list[Dispatcher] = []
        link = BrokerLink(
            self.config.mqtt,
            [Subscription(r.config.topic, r.config.qos) for r in self.routes],
            on_message=lambda m: dispatcher_ref[0].handle(m),
            on_published=lambda mid: dispatcher_ref[0].ledger.published(mid),
            receive_maximum=self.config.limits.max_in_flight,
            password=self.password,
            on_session_lost=lambda: dispatcher_ref[0].ledger.session_lost(),
            on_session_resumed=lambda: dispatcher_ref[0].ledger.session_resumed(),
            on_released=lambda mid: dispatcher_ref[0].ledger.released(mid),
            on_connected=lambda: dispatcher_ref[0].ledger.connected(),
        )
        replies = ReplyStore(self.config.replies.store, max_age=self.config.mqtt.session_expiry)
        dispatcher = Dispatcher(self.config, self.routes, link, loop, Context(env.hostname),
                                things=self.things, replies=replies, stats=self.stats)
        if self.things is not None:
            self.things.start()  # also delivers what a previous run left in the outbox
        dispatcher_ref.append(dispatcher)
        self.link, self.dispatcher = link, dispatcher
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.notifier.start_watchdog(loop)  # pinged from this loop: a blocked loop stops it
        if self.config.http.listen:
            self.http = HttpServer(self, self.http_token)
            await self.http.start()  # before connecting: /__/health says "starting" meanwhile
        runner = asyncio.create_task(link.run(), name="mqtt")
        if self.config.logging.log_payloads:
            log.warning("logging.log_payloads is on: message payloads (and any secret in them) go to the log")
        log.info("serving %d route(s) on %s:%d as %r", len(self.routes), self.config.mqtt.host,
                 self.config.mqtt.port, self.config.mqtt.client_id)
        ready = asyncio.create_task(self._announce_ready(link))
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({runner, stop}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
        ready.cancel()
        self.phase = "stopping"
        log.info("stopping: finishing %d in-flight request(s)", dispatcher.in_flight)
        self.notifier.notify_stopping(f"stopping: finishing {dispatcher.in_flight} in-flight request(s)")
        dispatcher.stop_intake()
        if not await dispatcher.drain(self.config.limits.shutdown_grace):
            log.warning("%d request(s) unfinished after %g s; the broker will redeliver them",
                        dispatcher.in_flight, self.config.limits.shutdown_grace)
        if self.http is not None:
            await self.http.close(min(self.config.limits.shutdown_grace, 5.0))
        await link.close()
        runner.cancel()
        for route in self.routes:
            if route.pool is not None:
                route.pool.shutdown()
        self.notifier.close()
        if self.things is not None:
            self.things.close()  # undelivered updates stay in the outbox for the next start
        api_client.shutdown()  # revokes cached tokens
        replies.close()
        log.info("stopped")
        return 0
