"""The daemon: load functions, connect, serve until SIGTERM/SIGINT, shut down cleanly.

Shutdown: leave any share group (bridge.link: the other members take the group's requests
from then on), stop reading new messages (other subscriptions stay: the broker keeps queueing
for the persistent session), let in-flight requests finish and be acknowledged within
``limits.shutdown_grace`` seconds, then disconnect.  Requests still unfinished then are not
acknowledged, so the broker redelivers them on the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from . import logs, runtime, secretstore, systemd
from .config import BridgeConfig, load_config
from .environment import environment
from .crashguard import CrashGuard
from .dispatch import Dispatcher, Route
from .errors import BridgeError, ConfigError
from .filelock import FileLock
from .functions import FunctionInfo, Unavailable, module_path, split_spec
from .http import HttpServer
from .iotstudio import client as api_client
from .iotstudio.automation import ThingWriter
from .link import BrokerLink
from .message import Subscription
from .replystore import ReplyStore
from .routing import is_shared, subscription_topic
from .stats import Stats
from .workers import Executor, Hooks, make_executor

log = logging.getLogger("bridge.daemon")
ATTEMPTS = "attempts.db"  # the crash guard's file, beside the reply store


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


def build_routes(config: BridgeConfig, functions: dict[str, FunctionInfo | Unavailable]) -> list[Route]:
    """The routes of ``config`` with what the executor loaded; a failed import answers 503."""
    routes: list[Route] = []
    for i, rc in enumerate(config.routes):
        function = functions.get(rc.handler) if rc.handler is not None else None
        if isinstance(function, Unavailable):
            log.error("routes[%d] (%s): %s; the route answers 503", i, rc.topic, function.reason)
        routes.append(Route(i, rc, function))
    return routes


def _subscriptions(config: BridgeConfig, routes: list[Route]) -> list[Subscription]:
    """One per route, in route order (v5 subscription id = index + 1), each in the share group
    ``[mqtt] share_group`` when one is set."""
    return [Subscription(subscription_topic(r.config.topic, config.mqtt.share_group), r.config.qos, i)
            for i, r in enumerate(routes, start=1)]


class Bridge:
    """The running daemon: the broker link, one dispatcher, the executor running functions."""

    def __init__(self, config: BridgeConfig, config_path: str | None = None, *,
                 instance: str | None = None, state_dir: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self._load_options = {"instance": instance, "state_dir": state_dir}  # re-applied on reload
        # First of all: a second bridge on the same state files must not touch them.
        store = config.replies.store
        self._locks = [FileLock(store, "replies.store"), FileLock(store.with_name(ATTEMPTS), "replies.store")]
        if any(r.thing is not None for r in config.routes):
            self._locks.append(FileLock(config.outbox.path, "outbox.path"))
        check_handler_files(config)
        runtime.configure(config)
        self.password = self._broker_password()
        api = api_client.configure(config.iot_studio)
        self.things: ThingWriter | None = None
        if any(r.thing is not None for r in config.routes):
            self.things = ThingWriter(config.outbox, secretstore.current(), api)
            for route in config.routes:
                if route.thing is not None:
                    self.things.check(route.thing)
        self._stop = asyncio.Event()
        self.routes: list[Route] = []
        self.dispatcher: Dispatcher | None = None
        self.link: BrokerLink | None = None
        self.executor: Executor | None = None
        self._reloading: asyncio.Lock | None = None
        self.notifier = systemd.Notifier.from_environment()  # no-op unless run by systemd
        # -- the HTTP side (bridge.http) reads these --
        self.stats = Stats()
        self.phase = "starting"  # "serving" once READY, "stopping" from SIGTERM on
        self._reload_pending = False  # SIGHUP while starting: reload once serving
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
        try:
            value = store.read(name)
        except secretstore.SecretError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from None
        if not value.strip():  # an empty bearer token would let anyone in
            raise ConfigError(f"{key}: the secret {name!r} is empty", key=key)
        return value

    def request_reload(self) -> None:
        """SIGHUP: reload in the background; the event loop keeps serving meanwhile."""
        if self._reloading is None:
            return
        asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> None:
        """Re-read the config and re-import the functions; the MQTT session stays.

        The new functions are imported off the event loop (in new worker processes, or on a
        thread), so MQTT and the watchdog carry on.  A config that does not validate (or
        names a missing module) is logged and ignored: the running configuration keeps
        serving.  ``[mqtt]``, ``[workers]`` and ``[http]`` changes need a restart.
        """
        if self.config_path is None:
            log.warning("reload requested but the bridge is not running from a config file")
            return
        if self.dispatcher is None or self.link is None or self.executor is None:
            self._reload_pending = True
            log.info("reload requested while starting: applied once the bridge is serving")
            return
        assert self._reloading is not None
        async with self._reloading:
            with self.notifier.reloading("reloading configuration", "serving"):
                try:
                    config = load_config(self.config_path, **self._load_options)
                    for section in ("mqtt", "workers", "http"):
                        if getattr(config, section) != getattr(self.config, section):
                            log.warning("[%s] changes take effect after a restart; kept as they are", section)
                            config = config.model_copy(update={section: getattr(self.config, section)})
                    if any(r.thing is not None for r in config.routes) and self.things is None:
                        raise ConfigError("Thing routes added by a reload need a restart")
                    check_handler_files(config)
                    functions = await self.executor.load(config, reload=True)
                except BridgeError as exc:
                    runtime.configure(self.config)
                    log.error("reload failed; still serving the previous configuration: %s", exc)
                    return
                runtime.configure(config)
                if config.logging != self.config.logging:
                    logs.setup(config.logging.level, config.logging.function_level)
                routes = build_routes(config, functions)
                self.executor.commit()
                self.config, self.routes = config, routes
                self.dispatcher.set_routes(config, routes)
                self.link.set_subscriptions(_subscriptions(config, routes))
                log.info("reloaded %s: %d route(s)", self.config_path, len(routes))

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self._stop.set()

    async def _announce_ready(self, link: BrokerLink) -> None:
        await link.ready()
        self.phase = "serving"  # /__/health answers 200 from now on, as READY=1 says
        log.info("ready: subscribed to %d topic filter(s)", len(self.routes))
        self.notifier.notify_ready(f"serving: subscribed to {len(self.routes)} topic filter(s)")
        if self._reload_pending:
            self._reload_pending = False
            self.request_reload()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        env = environment()
        self._reloading = asyncio.Lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.notifier.start_watchdog(loop)  # pinged from this loop: a blocked loop stops it
        if self.config.http.listen:
            self.http = HttpServer(self, self.http_token)
            await self.http.start()  # before loading: /__/health says "starting" meanwhile
        dispatcher_ref: list[Dispatcher] = []
        executor = make_executor(self.config, loop, env.hostname, Hooks(
            started=lambda job: dispatcher_ref[0].started(job),
            finished=lambda job, response: dispatcher_ref[0].completed(job, response),
            flush=lambda: dispatcher_ref and dispatcher_ref[0].publisher.flush()))
        self.executor = executor
        log.info("loading %d function(s) in %s mode", len({r.handler for r in self.config.routes if r.handler}),
                 self.config.workers.mode)
        try:
            functions = await executor.load(self.config)
        except BridgeError:
            await executor.close(0)
            raise
        executor.commit()
        self.routes = build_routes(self.config, functions)
        link = BrokerLink(
            self.config.mqtt,
            _subscriptions(self.config, self.routes),
            on_message=lambda m, i: dispatcher_ref[0].handle(m, i),
            on_published=lambda mid, refusal: dispatcher_ref[0].lanes.published(mid, refusal),
            max_in_flight=self.config.limits.max_in_flight,
            max_payload=self.config.limits.max_payload,
            state_dir=self.config.replies.store.parent,
            password=self.password,
            on_session_lost=lambda i: dispatcher_ref[0].lanes[i].ledger.session_lost(),
            on_session_resumed=lambda i, last_read: dispatcher_ref[0].lanes[i].ledger.session_resumed(last_read),
            on_released=lambda i, mid: dispatcher_ref[0].lanes[i].ledger.released(mid),
            on_connected=lambda: dispatcher_ref[0].lanes.replies_connected(),
            on_requests_read=executor.flush,  # the calls of a burst reach the workers at once
            session_idle=lambda i: dispatcher_ref[0].session_idle(i),
            on_drained=lambda i: dispatcher_ref[0].session_closed(i),
        )
        store = self.config.replies.store
        replies = ReplyStore(store, max_age=self.config.mqtt.session_expiry)
        guard = CrashGuard(store.with_name(ATTEMPTS), max_age=self.config.mqtt.session_expiry)
        dispatcher = Dispatcher(self.config, self.routes, link, loop, executor,
                                things=self.things, replies=replies, guard=guard, stats=self.stats)
        if self.things is not None:
            self.things.start()  # also delivers what a previous run left in the outbox
        dispatcher_ref.append(dispatcher)
        self.link, self.dispatcher = link, dispatcher
        runner = asyncio.create_task(link.run(), name="mqtt")
        if self.config.logging.log_payloads:
            log.warning("logging.log_payloads is on: message payloads (and any secret in them) go to the log")
        log.info("serving %d route(s) on %s:%d as %s", len(self.routes), self.config.mqtt.host,
                 self.config.mqtt.port, ", ".join(repr(c.client_id) for c in link.connections))
        ready = asyncio.create_task(self._announce_ready(link))
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({runner, stop}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
        ready.cancel()
        self.phase = "stopping"
        if any(is_shared(s.topic) for s in link.subscriptions):
            # Leave the share group(s) first, serving meanwhile: what the broker already gave
            # this bridge is answered here, new requests go to the other members.
            self.notifier.notify_stopping("stopping: leaving the share group(s)")
            await link.leave(self.config.limits.shutdown_grace)
        log.info("stopping: finishing %d in-flight request(s); at most %d were in flight at once "
                 "(limits.max_in_flight = %d)", dispatcher.in_flight, dispatcher.peak_in_flight,
                 self.config.limits.max_in_flight)
        self.notifier.notify_stopping(f"stopping: finishing {dispatcher.in_flight} in-flight request(s)")
        dispatcher.stop_intake()
        if not await dispatcher.drain(self.config.limits.shutdown_grace):
            log.warning("%d request(s) unfinished after %g s; the broker will redeliver them",
                        dispatcher.in_flight, self.config.limits.shutdown_grace)
        if self.http is not None:
            await self.http.close(min(self.config.limits.shutdown_grace, 5.0))
        await link.close()
        runner.cancel()
        await executor.close(grace=1.0)
        self.notifier.close()
        if self.things is not None:
            self.things.close()  # undelivered updates stay in the outbox for the next start
        api_client.shutdown()  # revokes cached tokens
        replies.close()
        guard.close()
        for lock in self._locks:
            lock.release()
        log.info("stopped")
        return 0
