"""Altair IoT Studio's result rules (docs/functions.md, ../shared/reference/iot-studio.md)."""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..errors import ResultError
from .response import JSON_TYPE, TEXT_TYPE, Response


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
            # allow_nan=False: NaN and Infinity are not JSON, and would break the whole reply.
            raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
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
