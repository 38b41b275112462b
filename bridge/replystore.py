"""Replies produced while the broker is unreachable, kept until they can be published.

While disconnected, a finished request's reply is *parked* by the dispatcher (in memory, at
most ``limits.max_in_flight`` of them, since each still holds its in-flight slot) and
published on reconnect, before its request is acknowledged.  Replies to QoS >= 1 requests are
also written here, to SQLite, so that a bridge that dies before the broker returns does not
run those functions again: the broker redelivers the unacknowledged requests after the
restart, and a redelivered request whose reply is stored gets that reply instead.

A stored reply is keyed by the request's content: topic, payload digest, correlation data and
response topic, not its packet id (RabbitMQ redelivers with new packet ids; see
bridge.delivery for the one limit of recognising a request by content).  Rows older than the
session expiry can no longer match a redelivery and are purged at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path

from .errors import BridgeError
from .message import Inbound, Outbound

log = logging.getLogger("bridge.replystore")

_SCHEMA = """
create table if not exists replies (
    key text primary key,
    created real not null,
    topic text not null,
    payload blob not null,
    qos integer not null,
    correlation blob,
    content_type text,
    user_properties text not null
)
"""


def _pairs(stored: str) -> list[tuple[str, str]]:
    """User properties as saved: a JSON list of pairs, or (rows of earlier versions) lines
    of ``name<TAB>value``."""
    try:
        return [(str(k), str(v)) for k, v in json.loads(stored)]
    except (ValueError, TypeError):
        return [tuple(line.split("\t", 1)) for line in stored.split("\n") if line]  # type: ignore[misc]


def request_key(msg: Inbound) -> str:
    h = hashlib.blake2b(msg.payload, digest_size=16)
    h.update(b"\0" + (msg.correlation_data or b"") + b"\0" + (msg.response_topic or "").encode("utf-8", "surrogatepass"))
    return f"{h.hexdigest()}:{msg.topic}"


class ReplyStore:
    """Durable store of replies to QoS >= 1 requests, written only while disconnected."""

    def __init__(self, path: Path, max_age: float) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute(_SCHEMA)
            purged = self._db.execute("delete from replies where created < ?", (time.time() - max_age,)).rowcount
        except sqlite3.Error as exc:
            raise BridgeError(f"reply store {path}: {exc}") from exc
        if purged:
            log.warning("dropped %d stored repl(ies) older than the session expiry", purged)
        self._keys = {row[0] for row in self._db.execute("select key from replies")}
        if self._keys:
            log.info("%d stored repl(ies) wait for their redelivered requests", len(self._keys))

    def __bool__(self) -> bool:
        return bool(self._keys)  # checked per message: a set lookup, no I/O

    def save(self, key: str, out: Outbound) -> None:
        props = json.dumps(out.user_properties)  # values may hold any character, newlines too
        try:
            self._db.execute(
                "insert or replace into replies values (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, time.time(), out.topic, out.payload, out.qos, out.correlation_data, out.content_type, props),
            )
        except sqlite3.Error as exc:  # the reply is still parked in memory
            log.error("reply store write failed: %s", exc)
            return
        self._keys.add(key)

    def take(self, key: str) -> Outbound | None:
        """The stored reply for a redelivered request, if any (it stays until :meth:`forget`)."""
        if key not in self._keys:
            return None
        row = self._db.execute(
            "select topic, payload, qos, correlation, content_type, user_properties from replies where key = ?",
            (key,),
        ).fetchone()
        if row is None:
            self._keys.discard(key)
            return None
        topic, payload, qos, correlation, content_type, props = row
        return Outbound(topic, bytes(payload), qos, correlation, content_type, _pairs(props))

    def forget(self, key: str) -> None:
        """The request was acknowledged: its reply is no longer needed."""
        if key in self._keys:
            self._keys.discard(key)
            try:
                self._db.execute("delete from replies where key = ?", (key,))
            except sqlite3.Error as exc:
                log.error("reply store delete failed: %s", exc)

    def close(self) -> None:
        self._db.close()
