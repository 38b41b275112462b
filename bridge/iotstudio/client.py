"""A client for the Altair IoT Studio REST API: Thing properties, events and actions.

One :class:`ApiClient` keeps a ``requests.Session`` (connections are reused), a token cache and
the retry policy; clients for other credentials made with :meth:`ApiClient.with_credentials`
share all three.  Every request has a timeout.  Connection errors, timeouts, 429 and 5xx are
retried with exponential backoff and jitter (a ``Retry-After`` is honoured, up to
``retry_after_max``) for at most ``max_attempts`` tries; other 4xx are never retried.  A 401
makes the client fetch a new token once and try again.  Failures raise
:class:`~bridge.errors.ApiError` with ``status`` (0 when no response arrived), ``message`` and
``details`` from the API's error object.

Functions running in the bridge get a ready client from :func:`api`::

    from bridge.iotstudio.client import api

    def handle(req):
        iot = api(client_id_secret="iot-client-id", client_secret_secret="iot-client-secret")
        iot.update_properties("my-space", "01HTHING", {"temperature": 27})

Requests may be retried after a timeout, so a POST (event, action) can arrive twice when the
API did its work but the answer was lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential, wait_random

from swx.config import api_url
from swx.errors import ResponseError, error_from_exception, error_from_response

from ..config import IotStudioConfig
from ..errors import ApiError, ConfigError
from .tokens import Credentials, TokenCache

log = logging.getLogger(__name__)

DEFAULT_SCOPES: tuple[str, ...] = ("thing.read", "thing.update")


class RetryLaterError(ResponseError):
    """429 or 503 whose ``Retry-After`` said when to try again (``retry_after`` seconds)."""

    retry_after: float | None = None


def _retryable(exc: BaseException) -> bool:
    # Deliberately narrower than ApiError.transient: 408 is a 4xx, and 4xx are not retried here.
    return isinstance(exc, ApiError) and (exc.status in (0, 429) or exc.status >= 500)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def thing_path(space: str, thing_id: str, category: str | None = None) -> str:
    """``/spaces/{space}[/categories/{category}]/things/{thing_id}``, each part URL-quoted."""
    prefix = f"/spaces/{_segment(space)}"
    if category:
        prefix += f"/categories/{_segment(category)}"
    return f"{prefix}/things/{_segment(thing_id)}"


class _Core:
    """What every client of a process shares: session, settings, tokens and the retry policy."""

    def __init__(self, config: IotStudioConfig, session: requests.Session | None,
                 clock: Callable[[], float]) -> None:
        self.config = config
        self.base_url = api_url(config.api_url or "")
        self.session = session or requests.Session()
        self.closed = threading.Event()
        self.tokens = TokenCache(self.post_form, config.token_refresh_margin, clock)
        # Exponential from backoff_initial up to backoff_max, plus up to backoff_initial of
        # jitter so that clients failing together do not retry together.
        self._backoff = wait_exponential(
            multiplier=config.backoff_initial, max=config.backoff_max
        ) + wait_random(0, config.backoff_initial)

    # The only place where anything is retried.
    def send(self, method: str, path: str, ok: Collection[int], retry: bool = True,
             **kw: Any) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.config.max_attempts if retry else 1),
            retry=retry_if_exception(_retryable),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(method, path, state),
            reraise=True,
        )
        return retrying(self._send_once, method, path, ok, **kw)

    def post_form(self, path: str, fields: dict[str, str], retry: bool) -> Any:
        # requests URL-encodes a dict given as data= (the original swx client did not).
        return self.send("POST", path, (200, 201, 204), retry, data=fields)

    def _send_once(self, method: str, path: str, ok: Collection[int], **kw: Any) -> Any:
        if self.closed.is_set():
            raise ApiError(0, "the IoT Studio client is closed")
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.config.timeout, **kw)
        except requests.RequestException as exc:
            raise error_from_exception(exc, url) from exc
        if response.status_code not in ok:
            if response.status_code in (429, 503) and "Retry-After" in response.headers:
                error = error_from_response(response, RetryLaterError)
                error.retry_after = _retry_after(response.headers["Retry-After"])
                raise error
            raise error_from_response(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            # A success that is not JSON came from something in between (a proxy, a captive
            # portal, a maintenance page), not the API: as if no answer came (transient).
            raise ApiError(0, f"{method} {path}: answered {response.status_code} with a body that is not JSON "
                              "(a proxy or portal in between?)") from exc

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.config.retry_after_max)
        return self._backoff(state)

    def _sleep(self, seconds: float) -> None:
        # Interruptible, so that close() does not wait out a long backoff.
        if self.closed.wait(seconds):
            raise ApiError(0, "the IoT Studio client was closed while waiting to retry")

    @staticmethod
    def _log_retry(method: str, path: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("IoT Studio %s %s failed (%s); attempt %d, retrying in %.2fs",
                    method, path, exc, state.attempt_number, wait)


class ApiClient:
    """The IoT Studio REST API, with or without credentials bound.

    ``ApiClient(config)`` builds a root client (no credentials); :meth:`with_credentials`
    returns a client that acts as one OAuth2 client and shares the root's connections and
    tokens.  :meth:`close` on the root revokes every cached token and closes the session.
    Clients are safe to use from several threads.
    """

    def __init__(self, config: IotStudioConfig | None = None, *,
                 session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # clock: what token lifetimes are measured with (monotonic seconds).
        self._core = _Core(config or IotStudioConfig(), session, clock)
        self._credentials: Credentials | None = None
        self._owner = True

    @property
    def base_url(self) -> str:
        """The API base URL in use (no trailing slash)."""
        return self._core.base_url

    def with_credentials(self, client_id: str, client_secret: str,
                         scopes: Sequence[str] = DEFAULT_SCOPES) -> "ApiClient":
        """A client acting as ``client_id`` with ``scopes``, sharing this client's resources."""
        bound = object.__new__(ApiClient)
        bound._core = self._core
        bound._credentials = Credentials.of(client_id, client_secret, scopes)
        bound._owner = False
        return bound

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, str] | None = None, ok: Collection[int] = (200,)) -> Any:
        """An authorized call of ``path`` (e.g. ``/spaces/s/things``); returns the JSON body."""
        if self._credentials is None:
            raise ConfigError("this IoT Studio client has no credentials; use with_credentials()")
        tokens = self._core.tokens
        token = tokens.get(self._credentials)
        try:
            return self._authorized(method, path, token, json, params, ok)
        except ApiError as exc:
            if exc.status != 401:
                raise
        # The API no longer accepts this token (expired early, revoked): fetch another, once.
        tokens.invalidate(self._credentials, token)
        token = tokens.get(self._credentials)
        return self._authorized(method, path, token, json, params, ok)

    def _authorized(self, method: str, path: str, token: str, json: Any,
                    params: Mapping[str, str] | None, ok: Collection[int]) -> Any:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return self._core.send(method, path, ok, headers=headers, json=json, params=params)

    def get_properties(self, space: str, thing_id: str, *,
                       category: str | None = None) -> dict[str, Any]:
        """The Thing's properties, as an object."""
        return self.request("GET", thing_path(space, thing_id, category) + "/properties") or {}

    def update_properties(self, space: str, thing_id: str, properties: Mapping[str, Any], *,
                          category: str | None = None,
                          update_history: bool = True) -> dict[str, Any]:
        """Write some of the Thing's properties; returns the updated properties object."""
        params = None if update_history else {"update_history": "false"}
        return self.request("PUT", thing_path(space, thing_id, category) + "/properties",
                            json=dict(properties), params=params, ok=(200, 201)) or {}

    def create_event(self, space: str, thing_id: str, event: str, data: Any = None, *,
                     category: str | None = None) -> dict[str, Any]:
        """Record the Thing event ``event`` carrying ``data``; returns the API's event object."""
        path = f"{thing_path(space, thing_id, category)}/events/{_segment(event)}"
        return self.request("POST", path, json={event: {"data": data}}, ok=(200, 201)) or {}

    def create_action(self, space: str, thing_id: str, action: str,
                      input: Mapping[str, Any] | None = None, *,
                      category: str | None = None) -> dict[str, Any]:
        """Request the Thing action ``action`` with ``input``; returns the API's action object."""
        path = f"{thing_path(space, thing_id, category)}/actions/{_segment(action)}"
        body = {action: {"input": dict(input or {})}}
        return self.request("POST", path, json=body, ok=(200, 201)) or {}

    def close(self) -> None:
        """Revoke the cached tokens and close the connections (root client only; idempotent)."""
        if not self._owner or self._core.closed.is_set():
            return
        self._core.tokens.revoke_all()  # before closed is set: revocation is itself a request
        self._core.closed.set()
        self._core.session.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# The process-wide client: the bridge makes it at start (configure) and closes it at shutdown;
# functions reach it through api().
_lock = threading.Lock()
_shared: ApiClient | None = None


def configure(config: IotStudioConfig | None = None) -> ApiClient:
    """Make (or replace) the process-wide root client from ``[iot_studio]`` and return it."""
    global _shared
    with _lock:
        previous, _shared = _shared, ApiClient(config)
        current = _shared
    if previous is not None:
        previous.close()
    return current


def shared() -> ApiClient:
    """The process-wide root client; made with default settings if the bridge made none."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = ApiClient()
        return _shared


def shutdown() -> None:
    """Close the process-wide client, revoking its tokens (the bridge calls this on exit)."""
    global _shared
    with _lock:
        previous, _shared = _shared, None
    if previous is not None:
        previous.close()


def api(client_id_secret: str = "", client_secret_secret: str = "",
        scopes: Sequence[str] = DEFAULT_SCOPES, *, client_id: str | None = None,
        client_secret: str | None = None) -> ApiClient:
    """A client for a function, acting as the OAuth2 client named by two secrets.

    ``client_id_secret`` and ``client_secret_secret`` are the *names* of the secrets holding
    the client id and secret (see ``[secrets]``); ``client_id``/``client_secret`` give values
    directly instead.  Secrets are read on every call, so rotation needs no restart; tokens
    are cached across calls and invocations.  Raises :class:`~bridge.errors.BridgeError`
    (``SecretError``/``ConfigError``) when a credential cannot be found.
    """
    if client_id is None:
        client_id = _secret(client_id_secret, "client_id_secret")
    if client_secret is None:
        client_secret = _secret(client_secret_secret, "client_secret_secret")
    return shared().with_credentials(client_id, client_secret, scopes)


def _secret(name: str, argument: str) -> str:
    from .. import secretstore  # late: the store's directory is configured at bridge start

    if not name:
        raise ConfigError(f"api() needs {argument} (a secret name) or the value itself",
                          key=argument)
    store = secretstore.current()
    if store is None:
        raise ConfigError("no secrets directory is configured ([secrets] dir)", key="secrets.dir")
    return store.read(name)
