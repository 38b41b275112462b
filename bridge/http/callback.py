"""Delivering ``/async-invoke`` results to their ``X-Callback-Url``.

The result is POSTed as the JSON reply document (``{"status_code", "headers", "body"}``, as an
MQTT ``json`` reply), with ``X-Call-Id`` (the id the 202 answer gave) and
``X-Function-Status``.  Connection errors (refused, reset, timed out) are retried with
exponential backoff and jitter, at most ``http.callback_attempts`` tries of
``http.callback_timeout`` seconds each; an answer of any status ends the delivery (a non-2xx
one is logged).  Only the callback's scheme, host and path are logged: a query may hold a secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential, wait_random

from ..codec import reply_document
from ..config import HttpConfig
from ..contract import Response

log = logging.getLogger("bridge.http")


def loggable(url: str) -> str:
    """``url`` without its query, fragment and credentials."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<an invalid URL>"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


class Callbacks:
    """Background deliveries; :meth:`close` gives the unfinished ones a moment, then stops them."""

    def __init__(self, config: HttpConfig, count: Callable[[str], None],
                 backoff_initial: float = 0.5, backoff_max: float = 10.0) -> None:
        self._config = config
        self._count = count
        self._wait = wait_exponential(multiplier=backoff_initial, max=backoff_max) + wait_random(0, backoff_initial)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def deliver(self, result: "asyncio.Future[Response]", url: str | None, call_id: str, function: str) -> None:
        """Wait for ``result`` (the call runs meanwhile) and POST it to ``url`` if there is one."""
        task = asyncio.get_running_loop().create_task(self._deliver(result, url, call_id, function))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, result: "asyncio.Future[Response]", url: str | None, call_id: str, function: str) -> None:
        response = await result
        if url is None:
            log.info("async call %s of %s answered %d (no X-Callback-Url)", call_id, function, response.status)
            return
        payload = json.dumps(reply_document(response), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Call-Id": call_id,
                   "X-Function-Status": str(response.status)}
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.callback_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(aiohttp.ClientConnectionError),
            before_sleep=lambda state: log.warning(
                "callback %s for %s: %s; retrying (attempt %d of %d)", loggable(url), call_id,
                _reason(state.outcome.exception() if state.outcome else None), state.attempt_number,
                self._config.callback_attempts),
            reraise=True,
        )
        try:
            status = await retrying(self._post, url, payload, headers)
        except aiohttp.ClientError as exc:
            self._count("failed")
            log.error("callback %s for %s not delivered: %s", loggable(url), call_id, _reason(exc))
            return
        except Exception as exc:  # e.g. a URL the client refuses: its message would quote the query
            self._count("failed")
            log.error("callback %s for %s not delivered: %s", loggable(url), call_id, type(exc).__name__)
            return
        if 200 <= status < 300:
            self._count("delivered")
            log.info("callback %s for %s delivered (%d)", loggable(url), call_id, status)
        else:
            self._count("refused")
            log.warning("callback %s for %s answered %d; not retried", loggable(url), call_id, status)

    async def _post(self, url: str, payload: bytes, headers: dict[str, str]) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._config.callback_timeout,
                                        sock_read=self._config.callback_timeout)
        async with self._session.post(url, data=payload, headers=headers, timeout=timeout,
                                      allow_redirects=False) as answer:
            await answer.read()
            return answer.status

    async def close(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for deliveries in progress, then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d callback(s) not delivered before shutdown", len(pending))
                await asyncio.wait(pending)
        if self._session is not None:
            await self._session.close()


def _reason(exc: BaseException | None) -> str:
    """Why a delivery failed, never quoting the URL (its query may hold a token): connection
    errors name only host and port; the text of others (InvalidURL...) may hold the URL."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
