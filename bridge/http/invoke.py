"""``/invoke/<function>[/path]`` and ``/async-invoke/<function>[/path]``, as IoT Studio serves them.

``<function>`` is a route's ``handler`` (``sum``, ``pkg.mod:main``); the first route with that
handler gives the workers, timeout and metrics labels.  The Event is built from the HTTP
request (method, body, headers, query, and as path what follows ``/invoke/<function>``) and
run by :meth:`bridge.dispatch.Dispatcher.call`, exactly as an MQTT request on that route.  The
HTTP response follows the same result rules and error object, plus ``X-Invoked: true``.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from ..contract import METHODS, Event, Response, error_body

if TYPE_CHECKING:
    from ..dispatch import Route
    from .server import BridgeView, HttpServer

INVOKED = ("X-Invoked", "true")
_DECODED = frozenset({"gzip", "deflate", "br", "zstd"})  # request bodies aiohttp decompresses
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 5.1)
# How the message is framed and the connection kept: the server's business, never a function's
# (a Content-Length of its own would cut the body short, or run into the next response).
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
                      "proxy-connection"})


def to_http(resp: Response) -> web.Response:
    """The HTTP response for a function's Response (an error object if a header is unusable)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in [*resp.headers, ("Content-Type", resp.content_type)]:
        bad = next((c for c in value if c in "\r\n\0"), None) or not _TOKEN.fullmatch(name)
        if bad or not value.isascii():
            problem = f"header {name[:64]!r} cannot be sent over HTTP"
            return to_http(error_body(500, f"reply could not be encoded: {problem}"))
        if name.lower() not in _FRAMING:
            headers.add(name, value)
    headers.add(*INVOKED)
    return web.Response(status=resp.status, body=resp.body, headers=headers)


def _refusal(status: int, message: str, **headers: str) -> web.Response:
    response = to_http(error_body(status, message))
    response.headers.update(headers)
    return response


def authorised(request: web.Request, token: str | None) -> bool:
    """True when no token is configured or the request carries ``Authorization: Bearer <token>``."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def find_route(view: "BridgeView", name: str) -> "Route | None":
    return next((r for r in view.routes if r.config.handler == name), None)


async def _prepare(request: web.Request) -> "tuple[Route, Event] | web.Response":
    """The route and Event for an invocation, or the error response that refuses it."""
    server: HttpServer = request.app["server"]
    view = server.view
    if not authorised(request, server.token):
        view.stats.refused("unauthorized")
        return _refusal(401, "a bearer token is required (Authorization: Bearer <token>)",
                        **{"WWW-Authenticate": 'Bearer realm="iot-bridge"'})
    if view.dispatcher is None:
        return _refusal(503, "the bridge is starting: its functions are loading", **{"Retry-After": "1"})
    name = request.match_info["function"]
    route = find_route(view, name)
    if route is None:
        return _refusal(404, f"no function {name[:128]!r}: no route has it as its handler")
    if request.method not in METHODS:
        return _refusal(405, f"method {request.method[:32]!r} not allowed; use one of {', '.join(sorted(METHODS))}",
                        Allow=", ".join(sorted(METHODS)))
    limit = view.config.limits.max_payload
    if request.content_length is not None and request.content_length > limit:
        view.stats.refused("payload_too_large")
        return _refusal(413, f"payload of {request.content_length} bytes exceeds the limit of {limit}")
    try:
        # Read with the limit of now: the application's was set at start, and a reload may
        # have changed limits.max_payload since.
        body = await request.clone(client_max_size=limit + 1).read()
    except web.HTTPRequestEntityTooLarge:
        body = None
    if body is None or len(body) > limit:
        view.stats.refused("payload_too_large")
        return _refusal(413, f"payload exceeds the limit of {limit} bytes")
    path = request.match_info.get("path") or "/"
    headers = list(request.headers.items())
    if request.headers.get("Content-Encoding", "").lower() in _DECODED:
        # aiohttp has decoded the body: the headers describe what the function gets.
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length")]
        headers.append(("Content-Length", str(len(body))))
    event = Event(body, method=request.method, path=path, headers=headers, query=request.query_string)
    return route, event


async def invoke(request: web.Request) -> web.Response:
    """Run the function and answer with its result."""
    prepared = await _prepare(request)
    if isinstance(prepared, web.Response):
        return prepared
    route, event = prepared
    view: BridgeView = request.app["server"].view
    future = view.dispatcher.call(route, event)  # type: ignore[union-attr]
    # A client that hangs up cancels this handler, never the call (it counts until done).
    return to_http(await asyncio.shield(future))


async def async_invoke(request: web.Request) -> web.Response:
    """Answer 202 at once; POST the reply document to ``X-Callback-Url`` when there is one."""
    server: HttpServer = request.app["server"]
    callback = request.headers.get("X-Callback-Url")
    if callback is not None:
        try:
            parts = urlsplit(callback)
            parts.port  # noqa: B018  (raises ValueError for a port that is no number, or out of range)
        except ValueError:
            return _refusal(400, "X-Callback-Url must be an http:// or https:// URL")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return _refusal(400, "X-Callback-Url must be an http:// or https:// URL")
    prepared = await _prepare(request)
    if isinstance(prepared, web.Response):
        return prepared
    route, event = prepared
    future = server.view.dispatcher.call(route, event)  # type: ignore[union-attr]
    if future.done():  # refused without running (at the bound, unavailable, ...): say so now
        return to_http(future.result())
    call_id = uuid.uuid4().hex
    server.callbacks.deliver(future, callback, call_id, route.config.handler or "")
    return web.json_response({"status": "accepted", "call_id": call_id}, status=202,
                             headers=dict([INVOKED, ("X-Call-Id", call_id)]))
