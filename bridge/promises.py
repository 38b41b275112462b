"""What the bridge relies on the broker for, and the warnings when a broker does not keep it.

Delivery without loss rests on a persistent session (subscriptions and queued requests kept
while the bridge is away), on the QoS each route asks for, and on the broker sending at most
``limits.max_in_flight`` unacknowledged requests.  Brokers differ (docs/brokers.md); each
broken promise is logged as a WARNING naming the broker setting to change.

:class:`SessionMarker` is a small file beside the reply store saying that the bridge had a
session with this broker, so a fresh start can tell "first start" from "the broker forgot the
session" (amqtt drops anonymous sessions on disconnect, mosquitto without persistence on a
restart), and which subscriptions that session holds (a resumed session whose subscriptions
are unchanged is not subscribed again: the broker resends its unacknowledged window before the
SUBACKs, and the bridge must be free to stop reading in the middle of it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .message import Subscription

log = logging.getLogger("bridge.transport")

SESSION_SETTINGS = ("mosquitto: `persistence true` and `persistent_client_expiration`; amqtt: anonymous "
                    "sessions end on disconnect, give the bridge a username (mqtt.username); RabbitMQ: "
                    "the queue of a session is deleted if the node loses it; EMQX: "
                    "`mqtt.session_expiry_interval`")
INFLIGHT_SETTINGS = ("mosquitto: `max_inflight_messages` (0 = no limit; before 2.0.13 it is not kept "
                     "exactly); RabbitMQ: `mqtt.prefetch`; EMQX: `mqtt.max_inflight`; HiveMQ: "
                     "`receive-maximum`")
QOS_SETTINGS = ("mosquitto: `max_qos`; RabbitMQ's MQTT plugin grants at most QoS 1; aedes and amqtt grant "
                "what is asked")


def session_not_kept(client_id: str, *, at_start: bool) -> None:
    """The broker answered a connection with a fresh session where the bridge had one."""
    when = "since the bridge last ran" if at_start else "while the connection was down"
    log.warning("the broker did not keep the session of client id %r %s: requests queued for it, and "
                "requests delivered but not yet acknowledged, are gone (%s)", client_id, when, SESSION_SETTINGS)


def check_granted(sub: Subscription, granted: int) -> None:
    """A SUBACK granted ``granted`` for ``sub`` (a failure is logged by the transport)."""
    if granted < sub.qos:
        log.warning("the broker granted QoS %d for %r where the route asks for QoS %d: requests arrive "
                    "with QoS %d (%s)", granted, sub.topic, sub.qos, granted, QOS_SETTINGS)


def check_receive_maximum(broker_cap: int, max_in_flight: int) -> None:
    """The broker's Receive Maximum (MQTT 5 CONNACK) against ``limits.max_in_flight``."""
    if broker_cap < max_in_flight:
        log.warning("the broker allows %d unacknowledged messages per client (Receive Maximum), fewer than "
                    "limits.max_in_flight = %d: at most %d requests run at once; raise the broker's limit "
                    "(%s) or lower limits.max_in_flight", broker_cap, max_in_flight, broker_cap, INFLIGHT_SETTINGS)


class SessionMarker:
    """``session-<hash>.json`` beside the reply store: this client id had a session there.

    Written when the subscriptions of a session are acknowledged and when the bridge stops;
    read once at start.  It holds the broker address, the subscriptions, and whether the bridge
    stopped cleanly (and when), so an expired session is told apart from a forgotten one.
    """

    def __init__(self, directory: Path, client_id: str, broker: str) -> None:
        digest = hashlib.blake2b(f"{broker}\0{client_id}".encode(), digest_size=8).hexdigest()
        self.path = directory / f"session-{digest}.json"
        self.client_id, self.broker = client_id, broker
        self._data = self._read()

    @staticmethod
    def client_ids(directory: Path, broker: str) -> list[str]:
        """The client ids with a session marker in ``directory`` for ``broker``."""
        found = []
        for path in sorted(directory.glob("session-*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("broker") == broker and data.get("had_session"):
                found.append(str(data.get("client_id")))
        return found

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable session marker %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("client_id") != self.client_id or data.get("broker") != self.broker:
            return {}
        return data

    @property
    def subscriptions(self) -> list[Subscription] | None:
        """The subscriptions the broker's session held when the bridge last ran, if known."""
        subs = self._data.get("subscriptions")
        if not isinstance(subs, list):
            return None
        try:
            # [topic, qos, id]; in older markers [topic, qos], the id being the position + 1.
            return [Subscription(str(s[0]), int(s[1]), int(s[2]) if len(s) > 2 else i)
                    for i, s in enumerate(subs, start=1)]
        except (TypeError, ValueError, IndexError):
            return None

    def fresh_session(self) -> None:
        """The first connection of this run found no session: warn if one was expected."""
        if not self._data.get("had_session"):
            return
        stopped = self._data.get("stopped_at")
        expiry = self._data.get("session_expiry")
        if isinstance(stopped, (int, float)) and isinstance(expiry, int) and time.time() - stopped > expiry:
            log.info("the session of client id %r expired while the bridge was stopped (mqtt.session_expiry = %d s)",
                     self.client_id, expiry)
        else:
            session_not_kept(self.client_id, at_start=True)
        self._data = {}

    def session_held(self, subscriptions: list[Subscription], session_expiry: int | None) -> None:
        """The broker holds a session with these subscriptions (all acknowledged), kept for
        ``session_expiry`` seconds after the bridge leaves (None: MQTT 3.1.1, the broker decides)."""
        if session_expiry == 0:
            self.forget()  # the broker ends the session when the bridge disconnects
            return
        self._write({"had_session": True, "subscriptions": [[s.topic, s.qos, s.id] for s in subscriptions],
                     "session_expiry": session_expiry, "stopped_at": None})

    def stopped(self) -> None:
        """The bridge disconnected cleanly: the session expiry counts from now."""
        if self._data.get("had_session"):
            self._write({**self._data, "stopped_at": time.time()})

    def forget(self) -> None:
        self._data = {}
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def _write(self, data: dict[str, Any]) -> None:
        self._data = {"client_id": self.client_id, "broker": self.broker, **data}
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._data), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the session marker %s: %s", self.path, exc)


class SessionSubscriptions:
    """The subscriptions a connection wants, and those the broker's session holds.

    A connection that resumes a session holding exactly the wanted subscriptions (same order:
    MQTT 5 subscription ids are positions) subscribes to nothing.
    """

    def __init__(self, wanted: list[Subscription]) -> None:
        self.wanted = wanted
        self.held: list[Subscription] | None = None
        self.unsubscribe: set[str] = set()  # filters no route wants, unsubscribed on connect
        self._pending: dict[int, Subscription] = {}  # SUBSCRIBE mid -> subscription
        self._failed = False
        self._warned: set[tuple[str, int]] = set()

    def connected(self, session_present: bool) -> bool:
        """A CONNACK: True when the session already holds every wanted subscription."""
        if not session_present:
            self.held = None
        self._pending.clear()
        self._failed = False
        return self.held == self.wanted

    def sent(self, mid: int, sub: Subscription) -> None:
        self._pending[mid] = sub

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def acknowledged(self, mid: int, granted: list[int | None]) -> bool:
        """A SUBACK (``None``: refused): True when it was the last one awaited."""
        sub = self._pending.pop(mid, None)
        if sub is None:
            return False
        for qos in granted:
            if qos is None:
                self._failed = True
                log.error("subscription to %r refused by the broker", sub.topic)
            elif (sub.topic, qos) not in self._warned:
                self._warned.add((sub.topic, qos))
                check_granted(sub, qos)
        if self._pending:
            return False
        if not self._failed:
            self.held = list(self.wanted)
        return True

    def replace(self, subscriptions: list[Subscription]) -> None:
        """A reload: drop filters no longer wanted, subscribe the rest again."""
        self.unsubscribe |= {s.topic for s in self.wanted} - {s.topic for s in subscriptions}
        self.wanted = subscriptions
        self.held = None

    def left_over(self, subscriptions: list[Subscription], keep: set[str] = frozenset()) -> None:
        """What a previous run's session held: resumed as is when unchanged, else the filters
        no route wants are unsubscribed, except those in ``keep`` (another session takes
        them over: unsubscribed once it holds them, see bridge.link)."""
        self.held = subscriptions
        self.unsubscribe |= {s.topic for s in subscriptions} - {s.topic for s in self.wanted} - keep
