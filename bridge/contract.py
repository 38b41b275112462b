"""The handler contract: what a function receives and how its result becomes a response.

This module is the compatibility surface with Altair IoT Studio's Python template
(``handle(req)``) and OpenFaaS's python3-http template (``handle(event, context)``).  It knows
nothing about MQTT, so any front end (MQTT, the ``invoke`` command, a future HTTP server or
worker process) builds an :class:`Event`, calls the function, and turns what came back, or what
it raised, into a :class:`Response` with the :class:`Rules` of the function's style
(:func:`rules_for`): :data:`IOT_STUDIO` or :data:`OPENFAAS`.  docs/functions.md tables both.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import linecache
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple
from urllib.parse import parse_qsl

from werkzeug.datastructures import Headers, ImmutableMultiDict
from werkzeug.exceptions import BadRequestKeyError, HTTPException
from werkzeug.http import http_date

from .errors import ResultError

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"  # Flask's default for a text or bytes body


class RequestHeaders(Headers):
    """werkzeug ``Headers`` built on first use (``_list``, which every method works on): most
    functions never read them, and a value werkzeug refuses (a newline) raises in the function."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = items

    def __getitem__(self, key: Any) -> Any:
        # A missing name is a plain KeyError, as with Flask's request.headers (werkzeug's
        # Headers would raise its BadRequestKeyError, a 400 for OpenFaaS functions).
        try:
            return super().__getitem__(key)
        except BadRequestKeyError:
            raise KeyError(key) from None

    def __getattr__(self, name: str) -> Any:
        if name != "_list":
            raise AttributeError(name)
        self._list: list[tuple[str, str]] = []
        self.extend(self.__dict__.pop("_items", ()))
        return self._list


class Event:
    """The request a function receives (IoT Studio calls it ``req``, OpenFaaS ``event``).

    ``method``, ``body`` (bytes), ``headers`` (werkzeug headers, case-insensitive), ``query``
    (werkzeug ``ImmutableMultiDict``), ``path`` (``"/" + topic`` on MQTT) and ``topic``: plain
    attributes, so ``vars(event)`` lists them as it does for OpenFaaS's own Event.
    """

    def __init__(self, body: bytes = b"", *, method: str = "POST", path: str = "/",
                 headers: Iterable[tuple[str, str]] = (), query: str = "", topic: str = "") -> None:
        self.body = body
        self.headers: Headers = RequestHeaders(headers)
        self.method = method
        self.query: ImmutableMultiDict[str, str] = (
            ImmutableMultiDict(parse_qsl(query, keep_blank_values=True)) if query else ImmutableMultiDict()
        )
        self.path = path
        self.topic = topic

    def __repr__(self) -> str:  # never shows the body: payloads stay out of logs
        return f"<Event {self.method} {self.path} {len(self.body)} bytes>"


@dataclass
class Context:
    """OpenFaaS's second argument: basic facts about where the function runs.

    A plain object (``vars(context)`` works); each call gets its own copy (:meth:`for_call`),
    as OpenFaaS makes one per request, so what a function sets on it stays with that call.
    """

    hostname: str = "localhost"

    def for_call(self) -> "Context":
        return Context(self.hostname)


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


# -- IoT Studio's result rules ----------------------------------------------------------------

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
    """Apply IoT Studio's result rules to what a function returned.

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


def _frame_of(exc: BaseException, source_file: str | None) -> Any:
    """The last traceback frame in the function's own file, else the last of all (or None)."""
    frames = traceback.extract_tb(exc.__traceback__)
    frame = next((f for f in reversed(frames) if f.filename == source_file), None)
    return frame if frame is not None or not frames else frames[-1]


def error_response(exc: BaseException, source_file: str | None = None) -> Response:
    """The 500 response IoT Studio gives for an uncaught exception.

    The line reported is the last traceback frame in the function's own file
    (``source_file``), else the last frame of all.
    """
    frame = _frame_of(exc, source_file)
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


# -- OpenFaaS python3-http's result rules ------------------------------------------------------
# The template's index.py turns a dict result into (body, status, headers) (format_response),
# then Flask's make_response applies its rules for what a view returns.  Both are followed
# here, not imported: Flask is not a dependency.  Deliberate differences: docs/functions.md.

_HEADER_TYPES = (Headers, dict, tuple, list)  # a 2-tuple's second item that means headers
_SKIPPED = frozenset({"content-type", "content-length"})  # carried apart, or by MQTT itself


@dataclass(frozen=True, slots=True)
class _Json:
    value: Any  # a dict body the template passes through jsonify before Flask sees it


def _json_default(value: Any) -> Any:
    """What Flask's JSON provider adds to :mod:`json`: dates, Decimal, UUID, dataclasses."""
    if isinstance(value, datetime.date):
        return http_date(value)
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _format_response(result: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The template's ``format_response`` for a dict (``statusCode``, ``body``, ``headers``),
    also reading the seed's ``status_code`` and ``response`` when the template's key is absent."""
    status = result["statusCode"] if "statusCode" in result else result.get("status_code", 200)
    if "body" in result or "response" in result:
        body = result["body"] if "body" in result else result["response"]
        body = _Json(body) if type(body) is dict else str(body)  # None -> "None", as there
    else:
        body = ""
    headers = result.get("headers", [])
    if type(headers) is dict:
        headers = list(headers.items())
    return body, status, headers


def _status(value: Any) -> int:
    """werkzeug's reading of a status: an int (HTTPStatus too) or text such as ``"201"`` or
    ``"201 Made"``; a code HTTP cannot send as a final status is refused."""
    if isinstance(value, int):
        code = int(value)
    elif isinstance(value, str) and value.strip():
        try:
            code = int(value.strip().partition(" ")[0])
        except ValueError:
            code = 0
    else:
        raise ResultError(f"invalid status {value!r}: expected an int or a string such as '201'")
    if not 200 <= code <= 999:
        raise ResultError(f"invalid status {value!r}: expected a code from 200 to 999")
    return code


def _json_response(value: Any) -> bytes:
    """Flask's JSON response body: sorted keys, ASCII, compact, a final newline."""
    try:
        text = json.dumps(value, default=_json_default, ensure_ascii=True, sort_keys=True,
                          separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ResultError(f"body is not JSON-serialisable: {exc}") from exc
    return (text + "\n").encode()


def _text_body(value: Any) -> bytes:
    """A text, bytes or streamed body, as werkzeug encodes it (UTF-8, strict)."""
    out = bytearray()
    for chunk in [value] if isinstance(value, (str, bytes, bytearray)) else value:  # may raise: the function's
        if not isinstance(chunk, (str, bytes, bytearray)):
            raise ResultError(f"a streamed body yielded {type(chunk).__name__}: expected str or bytes")
        try:
            out += chunk.encode() if isinstance(chunk, str) else chunk
        except UnicodeEncodeError as exc:
            raise ResultError(f"body cannot be encoded as UTF-8: {exc}") from exc
    return bytes(out)


def _merge_headers(base: Headers, headers: Any, replace: bool) -> Headers:
    """Flask's header merge: a text body's response is built with them (``extend``: repeats
    kept); a JSON or Response body gets them with ``update`` (a name replaces its values)."""
    try:
        base.update(headers) if replace else base.extend(headers)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ResultError(f"invalid headers {headers!r}: {exc}") from exc
    return base


def _from_werkzeug(response: Any) -> tuple[int, Headers, bytes]:
    try:
        return response.status_code, response.headers.copy(), response.get_data()
    except (TypeError, ValueError, AttributeError) as exc:
        raise ResultError(f"the returned response cannot be read: {exc}") from exc


def openfaas_response(result: Any) -> Response:
    """Apply OpenFaaS python3-http's result rules (the template's ``format_response``, then
    Flask's view rules) to what a function returned.  Raises :class:`ResultError` naming the
    bad value where Flask would fail with a 500."""
    if result is None:
        return Response(200, [], b"", HTML_TYPE)
    if type(result) is dict:  # exactly dict, as the template checks
        result = _format_response(result)
    status: Any = None
    headers: Any = None
    if isinstance(result, tuple):
        if len(result) == 3:
            result, status, headers = result
        elif len(result) == 2:
            result, status, headers = (result[0], None, result[1]) if isinstance(result[1], _HEADER_TYPES) \
                else (result[0], result[1], None)
        else:
            raise ResultError(f"function returned a tuple of {len(result)} items: expected "
                              "(body, status, headers), (body, status) or (body, headers)")
    if result is None:
        raise ResultError("function returned a tuple whose body is None")
    is_json = False
    code = 200
    if isinstance(result, (str, bytes, bytearray, Iterator)):
        raw = _text_body(result)
        merged = _merge_headers(Headers(), headers, replace=False) if headers else Headers()
        if "Content-Type" not in merged:
            merged["Content-Type"] = HTML_TYPE
    else:
        if isinstance(result, (_Json, dict, list)):
            raw, is_json = _json_response(result.value if isinstance(result, _Json) else result), True
            merged = Headers([("Content-Type", JSON_TYPE)])
        elif _is_werkzeug_response(result):
            code, merged, raw = _from_werkzeug(result)
        else:
            raise ResultError(f"function returned {type(result).__name__}: expected a dict, str, bytes, "
                              "list, tuple, iterator, werkzeug Response or None")
        if headers:
            _merge_headers(merged, headers, replace=True)
    return _response(_status(status) if status is not None else code, merged, raw, is_json)


def _response(code: int, headers: Headers, raw: bytes, is_json: bool = False,
              failure: Failure | None = None) -> Response:
    if not all(isinstance(k, str) for k, _ in headers.items()):
        raise ResultError(f"invalid headers {list(headers.items())!r}: a header name must be a str")
    rest = [(k, v) for k, v in headers.items() if k.lower() not in _SKIPPED]
    return Response(code, rest, raw, headers.get("Content-Type") or "application/octet-stream", is_json, failure)


def _is_werkzeug_response(value: Any) -> bool:
    from werkzeug.wrappers import Response as WerkzeugResponse  # rare: imported on first use
    return isinstance(value, WerkzeugResponse)


def openfaas_error(exc: BaseException, source_file: str | None = None) -> Response:
    """What an exception becomes for an OpenFaaS function: werkzeug's HTTP exceptions keep
    their status and page (``abort(404)``; ``event.query["missing"]`` is a 400), as Flask
    answers them; any other exception is the error object of :func:`error_response`."""
    if isinstance(exc, HTTPException):
        frame = _frame_of(exc, source_file)
        failure = Failure(type(exc).__name__, str(exc), f"{frame.filename}:{frame.lineno}" if frame else "")
        try:
            code, headers, raw = _from_werkzeug(exc.get_response())
            return _response(_status(code), headers, raw, failure=failure)
        except ResultError:
            pass  # e.g. a status HTTP cannot carry: the error object below names the exception
    return error_response(exc, source_file)


# -- the rule set of each style --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rules:
    """How one platform turns a function's result, or its exception, into a response."""

    name: str
    response: Callable[[Any], Response]  # raises ResultError for a result that breaks the rules
    error: Callable[[BaseException, str | None], Response]  # (exception, the function's file)


IOT_STUDIO = Rules("IoT Studio", normalise, error_response)
OPENFAAS = Rules("OpenFaaS python3-http", openfaas_response, openfaas_error)


def rules_for(wants_context: bool) -> Rules:
    """The rules of a function's style: ``handle(event, context)`` is OpenFaaS's."""
    return OPENFAAS if wants_context else IOT_STUDIO


def header_map(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict; a repeated name keeps every value, joined with ``", "``."""
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out
