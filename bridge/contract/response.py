"""What a call ends in: the normalised :class:`Response`, and IoT Studio's error object."""

from __future__ import annotations

import json
import linecache
import traceback
from dataclasses import dataclass, field
from typing import Any, NamedTuple

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"  # Flask's default for a text or bytes body


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


def header_map(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict; a repeated name keeps every value, joined with ``", "``."""
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out
