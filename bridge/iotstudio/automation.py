"""Thing property automation: routes that write IoT Studio Thing properties, durably.

A route with ``[routes.thing]`` writes, per message, either its function's result body (a JSON
object, when the status is below 300) or, for a route without a function, the message payload
(which must be a JSON object).  The dispatcher calls :func:`write_thing`, which decides *what*
(:func:`properties_from_result`, :func:`properties_from_payload`) and hands it to a
:class:`ThingSink` (:meth:`ThingWriter.submit` in the daemon), which only
appends to the SQLite outbox and returns.  A background thread delivers: strictly in order per
Thing, retrying what the API could not take now (no response, 401, 408, 429, 5xx) with backoff
until delivered or older than ``[outbox] max_age``.  Any other 4xx is final: logged, counted,
removed.  Delivery is at least once: an update whose answer was lost is sent again.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..config import OutboxConfig, ThingTarget
from ..errors import ApiError, BridgeError, ConfigError
from .. import secretstore
from ..contract import Response, error_body
from ..message import Inbound
from .client import ApiClient
from .outbox import Item, Outbox, OutboxError

log = logging.getLogger(__name__)

_IDLE_WAIT = 1.0  # seconds between looks at a non-empty outbox (for expiry and due retries)
_COUNTERS = ("delivered", "retried", "dropped_full", "dropped_expired", "failed_final")


class ThingPayloadError(BridgeError):
    """What a Thing route was given to write is not a JSON object; answer the request 400."""

    status = 400


class ThingSink(Protocol):
    """Where Thing property updates go (:class:`ThingWriter`)."""

    def submit(self, target: Any, properties: Any) -> None: ...


def write_thing(sink: ThingSink | None, target: ThingTarget, msg: Inbound, response: Response | None) -> Response:
    """Queue the Thing update a route makes; the reply says whether it was accepted.

    ``response`` is the function's (None for a no-code route, which writes the payload).
    The update is durable once queued; delivery to the API happens in the background.
    """
    try:
        if response is None:
            properties = properties_from_payload(msg.payload)
            response = Response(202, body=b"Thing update queued")
        else:
            properties = properties_from_result(response.status, response.data)
            if properties is None:
                return response
        if sink is None:
            raise RuntimeError("Thing updates are not enabled")
        sink.submit(target, properties)
        return response
    except ThingPayloadError as exc:
        return error_body(400, str(exc))
    except Exception as exc:
        log.error("Thing update for %s not queued: %s", msg.topic, exc)
        return error_body(503, f"Thing update not queued: {exc}")


def properties_from_payload(payload: bytes | str) -> dict[str, Any]:
    """The properties a function-less Thing route writes: the payload as a JSON object."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ThingPayloadError("the payload is not JSON; this route writes Thing properties "
                                'and needs a JSON object such as {"temperature": 27}') from exc
    if not isinstance(value, dict):
        raise ThingPayloadError(f"the payload is a JSON {type(value).__name__}; this route "
                                "writes Thing properties and needs a JSON object")
    if not value:
        raise ThingPayloadError("the payload is an empty JSON object: no property to write")
    return value


def properties_from_result(status: int, body: Any) -> dict[str, Any] | None:
    """The properties a Thing route with a function writes, or None when there is nothing.

    Only a successful result (status below 300) whose body is a non-empty dict is written;
    an error reply, or a body that is text, is answered as usual and writes nothing.
    """
    if status < 300 and isinstance(body, Mapping) and body:
        return dict(body)
    return None


def thing_key(target: ThingTarget) -> str:
    """What order is kept by: a Thing id is unique within its space, whatever the path form."""
    return f"{target.space}/{target.thing_id}"


class ThingWriter:
    """Delivers Thing property updates through the outbox.  Thread-safe.

    ``client`` is a root :class:`ApiClient` (its owner closes it, after this writer);
    ``secrets`` is the store holding the credentials the targets name (default: the
    process's configured store, looked up at delivery so rotated secrets are used).
    """

    def __init__(self, config: OutboxConfig, secrets: secretstore.SecretStore | None,
                 client: ApiClient, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._secrets = secrets
        self._client = client
        self._clock = clock
        self._outbox = Outbox(config.path, config.max_items, config.fsync)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._counts_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start delivering (also what earlier processes left in the outbox)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="thing-writer", daemon=True)
            self._thread.start()

    def check(self, target: ThingTarget) -> None:
        """Raise :class:`~bridge.errors.ConfigError` when a secret ``target`` names is missing."""
        store = self._store()
        for name in (target.client_id_secret, target.client_secret_secret):
            if store is None or not store.exists(name):
                raise ConfigError(f"secret {name!r} of Thing {thing_key(target)} not found",
                                  key="routes.thing")

    def submit(self, target: ThingTarget, properties: Mapping[str, Any]) -> None:
        """Queue ``properties`` for ``target`` durably and return at once.

        Raises :class:`ThingPayloadError` when ``properties`` cannot be sent as a JSON object
        and :class:`~bridge.iotstudio.outbox.OutboxError` when the outbox cannot store it.
        """
        if not isinstance(properties, Mapping) or not all(isinstance(k, str) for k in properties):
            raise ThingPayloadError("Thing properties must be an object with string names")
        try:
            body = json.dumps(dict(properties), allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ThingPayloadError(f"Thing properties are not JSON-serializable: "
                                    f"{type(exc).__name__}") from exc
        if self._stopping.is_set():
            raise OutboxError("the Thing writer is closed")
        dropped = self._outbox.put(thing_key(target), target.model_dump_json(), body, self._clock())
        if dropped:
            self._count("dropped_full", dropped)
            log.warning("outbox full (%d updates): dropped the %d oldest pending update(s)",
                        self._config.max_items, dropped)
        self._wake.set()

    def stats(self) -> dict[str, int]:
        """Counters since this writer was made, and the number of updates still pending."""
        with self._counts_lock:
            counts = dict(self._counts)
        try:
            counts["pending"] = self._outbox.pending()
        except OutboxError:
            counts["pending"] = -1  # closed: unknown
        return counts

    def close(self, timeout: float = 5.0) -> None:
        """Stop delivering (waiting up to ``timeout`` s for a delivery in progress) and close
        the outbox.  Pending updates stay on disk for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._outbox.close()

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

    def _store(self) -> secretstore.SecretStore | None:
        return self._secrets if self._secrets is not None else secretstore.current()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so a submit from now on wakes the next wait
            try:
                wait = self._deliver_due()
            except OutboxError as exc:
                if self._stopping.is_set():
                    return
                log.error("%s", exc)
                wait = _IDLE_WAIT
            except Exception:  # a bug must not end delivery for the life of the process
                log.exception("Thing writer: unexpected error; continuing")
                wait = _IDLE_WAIT
            if wait > 0:
                self._wake.wait(wait)

    def _deliver_due(self) -> float:
        """Expire, deliver what is due; return how long to wait before looking again."""
        now = self._clock()
        expired = self._outbox.expire(now - self._config.max_age)
        if expired:
            self._count("dropped_expired", expired)
            log.warning("dropped %d Thing update(s) older than max_age (%.0fs)",
                        expired, self._config.max_age)
        items = self._outbox.due(now)
        for item in items:
            if self._stopping.is_set():
                return 0.0
            self._deliver(item)
        if items:
            return 0.0  # delivered heads make the next rows of their Things due at once
        next_due = self._outbox.next_due()
        if next_due is None:
            return 60.0  # empty: only a submit (which wakes us) can bring work
        return min(max(next_due - self._clock(), 0.01), _IDLE_WAIT)

    def _deliver(self, item: Item) -> None:
        try:
            target = ThingTarget.model_validate_json(item.target)
        except ValueError:  # written by a version with another target shape
            self._outbox.remove(item.id)
            self._count("failed_final")
            log.error("Thing %s: stored update has an unreadable target; dropped", item.thing_key)
            return
        try:
            store = self._store()
            if store is None:
                raise ConfigError("no secrets directory is configured", key="secrets.dir")
            client = self._client.with_credentials(
                store.read(target.client_id_secret), store.read(target.client_secret_secret),
                target.scopes)
            client.update_properties(target.space, target.thing_id, json.loads(item.body),
                                     category=target.category, update_history=target.update_history)
        except ApiError as exc:
            if exc.transient or exc.status == 401:
                self._retry_later(item, f"{exc}", getattr(exc, "retry_after", None))
            else:
                self._outbox.remove(item.id)
                self._count("failed_final")
                log.error("Thing %s refused an update (%s); dropped, not retried",
                          item.thing_key, exc)
            return
        except BridgeError as exc:  # a missing secret: the operator may still add it
            self._retry_later(item, f"{exc}", None)
            return
        self._outbox.remove(item.id)
        self._count("delivered")

    def _retry_later(self, item: Item, reason: str, retry_after: float | None) -> None:
        # The exponent is bounded: a float overflows at 2 ** 1024, some 13 h of failures at 60 s.
        base = min(self._config.retry_max, self._config.retry_initial * 2.0 ** min(item.attempts, 64))
        delay = base * random.uniform(0.5, 1.0)  # jitter: gateways that lost the API together
        if retry_after is not None:  # never sooner than the API asked (max_age still ends the row)
            delay = max(delay, retry_after)
        self._outbox.defer(item.id, self._clock() + delay)
        self._count("retried")
        log.warning("update for Thing %s not delivered (%s); attempt %d, next in %.1fs",
                    item.thing_key, reason, item.attempts + 1, delay)
