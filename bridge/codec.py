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
from json.encoder import encode_basestring
from typing import Any

from .contract import METHODS, Event, Response, error_body, header_map
from .message import Inbound, Outbound, pack_publish_properties


def _user_property(msg: Inbound, name: str) -> str | None:
    for key, value in msg.user_properties:
        if key == name:
            return value
    return None


_OWN_HEADERS = frozenset({"x-topic", "content-length"})
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
    headers: list[tuple[str, str]] = []
    if msg.user_properties:
        # The bridge's own headers win: a requester cannot spoof the topic or the length.
        own = _OWN_HEADERS if msg.content_type is None else _OWN_HEADERS | {"content-type"}
        headers = [(k, v) for k, v in msg.user_properties if k.lower() not in own]
        method = (_user_property(msg, "method") or "POST").upper()
        query = _user_property(msg, "query") or ""
    if msg.content_type is not None:
        headers.append(("Content-Type", msg.content_type))
    headers.append(("X-Topic", msg.topic))
    headers.append(("Content-Length", str(len(msg.payload))))
    return Event(msg.payload, method=method, path="/" + msg.topic, headers=headers, query=query, topic=msg.topic)


def reply_document(resp: Response) -> dict[str, Any]:
    """The JSON reply object: ``{"status_code", "headers", "body"}`` (see :func:`encode_reply`)."""
    return json.loads(_json_reply(resp))


# What json.dumps(..., ensure_ascii=False, separators=(",", ":")) builds on every call.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


# The "headers" member of a JSON reply, by headers and content type: a function mostly answers
# with the same few, and encoding them was the largest part of a reply.  Small ones only, and a
# bounded number, so headers that differ per request cost no memory.
_HEADERS_JSON: dict[tuple[tuple[str, str], ...], str] = {}
_HEADERS_JSON_MAX, _HEADERS_JSON_MAX_CHARS = 256, 1024


def _headers_json(resp: Response) -> str:
    key = (*resp.headers, ("Content-Type", resp.content_type))
    try:
        return _HEADERS_JSON[key]
    except KeyError:
        cacheable = True
    except TypeError:  # a header given as a list, not a tuple
        cacheable = False
    text = _COMPACT.encode(header_map(list(key)))
    if cacheable and len(_HEADERS_JSON) < _HEADERS_JSON_MAX and len(text) <= _HEADERS_JSON_MAX_CHARS:
        _HEADERS_JSON[key] = text
    return text


def _json_reply(resp: Response) -> bytes:
    head = f'{{"status_code":{resp.status},"headers":{_headers_json(resp)},"body":'
    if resp.json:
        body = resp.body  # already JSON: embedded as an object, not encoded twice
        tail = b"}"
    else:
        try:
            body = encode_basestring(resp.body.decode("utf-8")).encode()  # as json.dumps does it
            tail = b"}"
        except UnicodeDecodeError:
            # JSON cannot carry raw bytes: say how the string is encoded.
            body = b'"' + base64.b64encode(resp.body) + b'"'
            tail = b',"body_encoding":"base64"}'
    return head.encode() + body + tail


def encode_reply(resp: Response, reply_format: str, topic: str, qos: int, correlation: bytes | None) -> Outbound:
    """The message that carries ``resp`` to ``topic``.

    Raises :class:`ValueError` (or ``UnicodeEncodeError``) when the reply cannot be encoded
    in that format, e.g. a header value over 65,535 bytes as an MQTT user property.
    """
    if reply_format == "body":
        props = [("status", str(resp.status)), *resp.headers]
        out = Outbound(topic, resp.body, qos, correlation, resp.content_type, props)
        pack_publish_properties(out)  # fails here, not later in the transport
        return out
    return Outbound(topic, _json_reply(resp), qos, correlation, "application/json")
