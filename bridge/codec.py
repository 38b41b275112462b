"""MQTT message <-> handler contract: build the :class:`Event`, encode the reply.

Request mapping (IoT Studio's MQTT triggers pass the topic in ``X-Topic``):

* body = payload bytes, path = ``"/" + topic``, topic = topic;
* method = the v5 user property ``method`` (GET, PUT, PATCH, DELETE, POST), default POST;
* headers = every v5 user property (repeated names kept), ``Content-Type`` from the v5
  content-type property, ``X-Topic`` and ``Content-Length``;
* query = the v5 user property ``query``, parsed as a URL query string.

Reply formats: ``json`` (default) publishes ``{"status_code", "headers", "body"}`` where a dict
body stays an object and any other body is its text; ``body`` publishes the body bytes alone
with the content type, ``status`` and headers as v5 properties.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .contract import METHODS, Event, Response, error_body, header_map
from .message import Inbound, Outbound


def _user_property(msg: Inbound, name: str) -> str | None:
    for key, value in msg.user_properties:
        if key == name:
            return value
    return None


MAX_USER_PROPERTIES = 256
MAX_USER_PROPERTY_BYTES = 64 * 1024


def check_request(msg: Inbound, max_payload: int) -> Response | None:
    """The error response a message gets before any function runs, or None when acceptable."""
    if len(msg.payload) > max_payload:
        return error_body(413, f"payload of {len(msg.payload)} bytes exceeds the limit of {max_payload}")
    if msg.user_properties:
        size = sum(len(k) + len(v) for k, v in msg.user_properties)
        if len(msg.user_properties) > MAX_USER_PROPERTIES or size > MAX_USER_PROPERTY_BYTES:
            return error_body(431, f"{len(msg.user_properties)} user properties of {size} characters exceed the "
                                   f"limits of {MAX_USER_PROPERTIES} and {MAX_USER_PROPERTY_BYTES}")
        method = _user_property(msg, "method")
        if method is not None and method.upper() not in METHODS:
            return error_body(405, f"method {method[:32]!r} not allowed; use one of {', '.join(sorted(METHODS))}")
    return None


def event_from_message(msg: Inbound) -> Event:
    """The Event a function receives for ``msg`` (call :func:`check_request` first)."""
    method = "POST"
    query = ""
    headers: list[tuple[str, str]] = list(msg.user_properties)
    if headers:
        method = (_user_property(msg, "method") or "POST").upper()
        query = _user_property(msg, "query") or ""
    if msg.content_type is not None:
        headers.append(("Content-Type", msg.content_type))
    headers.append(("X-Topic", msg.topic))
    headers.append(("Content-Length", str(len(msg.payload))))
    return Event(msg.payload, method=method, path="/" + msg.topic, headers=headers, query=query, topic=msg.topic)


def reply_document(resp: Response) -> dict[str, Any]:
    """The JSON reply object: ``{"status_code", "headers", "body"}``."""
    headers = header_map([*resp.headers, ("Content-Type", resp.content_type)])
    doc: dict[str, Any] = {"status_code": resp.status, "headers": headers}
    if resp.data is not None:
        doc["body"] = resp.data
    else:
        try:
            doc["body"] = resp.body.decode("utf-8")
        except UnicodeDecodeError:
            # JSON cannot carry raw bytes: say how the string is encoded.
            doc["body"] = base64.b64encode(resp.body).decode("ascii")
            doc["body_encoding"] = "base64"
    return doc


def encode_reply(resp: Response, reply_format: str, topic: str, qos: int, correlation: bytes | None) -> Outbound:
    """The message that carries ``resp`` to ``topic``."""
    if reply_format == "body":
        props = [("status", str(resp.status)), *resp.headers]
        return Outbound(topic, resp.body, qos, correlation, resp.content_type, props)
    payload = json.dumps(reply_document(resp), ensure_ascii=False, separators=(",", ":")).encode()
    return Outbound(topic, payload, qos, correlation, "application/json")
