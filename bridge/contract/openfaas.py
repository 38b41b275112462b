"""OpenFaaS python3-http's result rules.

The template's index.py turns a dict result into (body, status, headers) (format_response),
then Flask's make_response applies its rules for what a view returns.  Both are followed
here, not imported: Flask is not a dependency.  Deliberate differences: docs/functions.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException
from werkzeug.http import http_date

from ..errors import ResultError
from .response import HTML_TYPE, JSON_TYPE, Failure, Response, _frame_of, error_response


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
                          separators=(",", ":"), allow_nan=False)  # NaN is not JSON: the reply would break
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
    # A werkzeug Response's own status is checked as a given one is (101 would hang an HTTP
    # client; any number would make a metrics series of its own).
    return _response(_status(status if status is not None else code), merged, raw, is_json)


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
