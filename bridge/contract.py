"""The handler contract: what a function receives and how its result becomes a response.

This module is the compatibility surface with Altair IoT Studio's Python template
(``handle(req)``) and OpenFaaS's python3-http template (``handle(event, context)``).  It knows
nothing about MQTT, so any front end (MQTT, the ``invoke`` command, a future HTTP server) builds
an :class:`Event`, calls the function, and turns what came back into a :class:`Response` with
:func:`normalise` or :func:`error_response`.
"""

from __future__ import annotations

import json
import linecache
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple
from urllib.parse import parse_qsl

from werkzeug.datastructures import Headers, ImmutableMultiDict

from .errors import ResultError

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


class Event:
    """The request a function receives (IoT Studio calls it ``req``, OpenFaaS ``event``).

    ``method``, ``body`` (bytes), ``headers`` (werkzeug headers, case-insensitive), ``query``
    (werkzeug ``ImmutableMultiDict``), ``path`` (``"/" + topic`` on MQTT) and ``topic``.
    ``headers`` and ``query`` are built on first use: most functions never touch them.
    """

    __slots__ = ("method", "body", "path", "topic", "_header_items", "_headers", "_query_string", "_query")

    def __init__(
        self,
        body: bytes = b"",
        *,
        method: str = "POST",
        path: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        query: str = "",
        topic: str = "",
    ) -> None:
        self.method = method
        self.body = body
        self.path = path
        self.topic = topic
        self._header_items = headers
        self._headers: Headers | None = None
        self._query_string = query
        self._query: ImmutableMultiDict[str, str] | None = None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(list(self._header_items))
        return self._headers

    @property
    def query(self) -> ImmutableMultiDict[str, str]:
        if self._query is None:
            self._query = ImmutableMultiDict(parse_qsl(self._query_string, keep_blank_values=True))
        return self._query

    def __repr__(self) -> str:  # never shows the body: payloads stay out of logs
        return f"<Event {self.method} {self.path} {len(self.body)} bytes>"


@dataclass(frozen=True, slots=True)
class Context:
    """OpenFaaS's second argument: basic facts about where the function runs."""

    hostname: str = "localhost"


class Failure(NamedTuple):
    """Why a request ended in an error, for the bridge's log: never the payload."""

    kind: str  # the exception's type, or what went wrong ("Timeout", "PayloadTooLarge", ...)
    message: str
    where: str = ""  # the function's file:line, when known


@dataclass(slots=True)
class Response:
    """A normalised result: status, headers, body bytes and content type.

    ``json`` says the body is JSON made from an object (a dict body, the error object), so a
    JSON reply embeds it as an object.  ``failure`` is set when the request ended in an error
    (an exception, an invalid result, a timeout, a refusal), not when a function chose its status.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_type: str = TEXT_TYPE
    json: bool = False
    failure: Failure | None = None

    @property
    def data(self) -> Any:
        """The object a JSON body was made from (None for other bodies)."""
        return json.loads(self.body) if self.json else None


def _status_of(result: dict[str, Any]) -> int:
    for key in ("status_code", "statusCode"):
        if key in result:
            value = result[key]
            if type(value) is not int or not 200 <= value <= 599:
                raise ResultError(f"invalid {key} {value!r}: expected an int from 200 to 599")
            return value
    return 200


def _headers_of(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        items: Iterable[Any] = value.items()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ResultError(f"invalid headers {type(value).__name__}: expected a dict or a list of pairs")
    out: list[tuple[str, str]] = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ResultError(f"invalid header {item!r}: expected a (name, value) pair")
        out.append((str(item[0]), str(item[1])))
    return out


def normalise(result: Any) -> Response:
    """Apply the platform's result rules to what a function returned.

    ``None`` is an empty 200; otherwise a dict with optional ``status_code``/``statusCode``,
    ``headers`` (dict or list of pairs) and ``body``/``response``.  A dict body is JSON, bytes
    pass through, anything else is ``str(body)`` as text.  Raises :class:`ResultError` naming
    the bad value when the result breaks the rules.
    """
    if result is None:
        return Response()
    if not isinstance(result, dict):
        raise ResultError(f"function returned {type(result).__name__}, expected a dict or None")
    status = _status_of(result)
    headers = _headers_of(result.get("headers"))
    body = result["body"] if "body" in result else result.get("response")
    explicit_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    if explicit_type is not None:
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
    is_json = False
    if body is None:
        raw, content_type = b"", TEXT_TYPE
    elif isinstance(body, dict):
        try:
            raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise ResultError(f"body is not JSON-serialisable: {exc}") from exc
        is_json, content_type = True, JSON_TYPE
    elif isinstance(body, (bytes, bytearray, memoryview)):
        raw, content_type = bytes(body), "application/octet-stream"
    else:
        try:
            raw, content_type = str(body).encode("utf-8", "surrogateescape"), TEXT_TYPE
        except UnicodeEncodeError as exc:
            raise ResultError(f"body cannot be encoded as UTF-8: {exc}") from exc
    return Response(status, headers, raw, explicit_type or content_type, is_json)


def error_body(status: int, message: str, details: dict[str, Any] | None = None, *,
               kind: str = "", where: str = "") -> Response:
    """A response carrying IoT Studio's error object ``{"error": {status, message, details}}``.

    ``kind`` and ``where`` (file:line) describe the failure for the bridge's log.
    """
    error: dict[str, Any] = {"status": status, "message": message}
    if details:
        error["details"] = details
    # backslashreplace: a lone surrogate in a message stays a valid JSON escape.
    body = json.dumps({"error": error}, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return Response(status, [], body, JSON_TYPE, True, Failure(kind or ERROR_KINDS.get(status, "Error"), message, where))


ERROR_KINDS = {400: "BadRequest", 405: "MethodNotAllowed", 413: "PayloadTooLarge", 431: "HeadersTooLarge",
               500: "Error", 503: "Unavailable", 504: "Timeout"}


def error_response(exc: BaseException, source_file: str | None = None) -> Response:
    """The 500 response IoT Studio gives for an uncaught exception.

    The line reported is the last traceback frame in the function's own file
    (``source_file``), else the last frame of all.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    frame = next((f for f in reversed(frames) if f.filename == source_file), None)
    if frame is None and frames:
        frame = frames[-1]
    line = frame.lineno if frame else 0
    code = (frame.line or linecache.getline(frame.filename, line).strip()) if frame else ""
    kind = type(exc).__name__
    info = str(exc)
    details = {
        "exception_type": kind,
        "exception_info": info,
        "exception_line_number": line,
        "exception_line_code": code,
    }
    where = f"{frame.filename}:{line}" if frame else ""
    return error_body(500, f"{kind} at line {line}: {info}", details, kind=kind, where=where)


def header_map(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict; a repeated name keeps every value, joined with ``", "``."""
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out
