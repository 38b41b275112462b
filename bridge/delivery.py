"""Delivery bookkeeping: when each request may be acknowledged, and which replies wait.

Everything here runs on the event loop thread.  The dispatcher decides *what* a request is
answered; the :class:`Ledger` decides *when* its reply is published and its acknowledgement
sent, across the two broker connections (bridge.link):

* A QoS >= 1 request is acknowledged only after its reply was handed to the broker (for a
  QoS >= 1 reply: after the broker acknowledged the reply).  A bridge killed before that gets
  the request redelivered.
* Replies go out on the reply connection, acknowledgements on the request connection.  While
  the reply connection is down, finished replies are parked (in memory, and for QoS >= 1
  requests in the reply store, so a restart does not run them again).
* When the request connection resumes its session the broker resends every QoS 1 request it
  has no acknowledgement for.  Brokers differ in how: mosquitto with the same packet id and
  DUP set, aedes with the same id and no DUP, RabbitMQ with new ids.  So from the resume on
  (the *resume window*) a copy is recognised by its content: topic, payload, correlation data
  and response topic.  The copy of a request still running or answered is never run again:
  the request is acknowledged once, with the copy's packet id (the original's may name another
  message by now).  The copy of a request acknowledged shortly before the drop (that
  acknowledgement may have been lost) is acknowledged again and not answered again.
  The window closes when every expected copy has come, or after :data:`WINDOW_SLACK` new
  messages (brokers resend what they had in flight first, though aedes mixes new messages in);
  copies of acknowledged requests are expected for :data:`ACKED_WINDOW` seconds at most.  Its
  one limit: a new request identical to one of those, arriving inside the window, is taken for
  the copy (docs/reliability.md).
* QoS 2 requests are not resent (the broker resends only PUBREL): their ids stay valid.
* When the broker starts a fresh session, pending packet ids name other messages from then on:
  work in progress is answered but never acknowledges its old id.

The normal path hashes nothing: content keys are computed only for held requests when the
session resumes, and for messages arriving inside the window.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Protocol

from .message import Inbound, Outbound
from .replystore import ReplyStore, request_key

log = logging.getLogger("bridge.delivery")

WINDOW_SLACK = 256  # new messages after a resume, after which no more copies are expected
RECENT_ACKS = 256  # acknowledgements remembered, in case the connection dropped under them
ACK_MARGIN = 2.0  # seconds before the last read from the broker in which an ack may be lost
ACKED_WINDOW = 5.0  # seconds after a resume in which copies of acknowledged requests are expected
INLINE_KEY_BYTES = 64 * 1024  # larger payloads are remembered by digest, not by reference

CopyKey = tuple[str, object, bytes | None, str | None]


def copy_key(msg: Inbound) -> CopyKey:
    """What a broker's copy of ``msg`` has in common with it, whatever its packet id and DUP flag."""
    payload = msg.payload
    body: object = payload
    if len(payload) > INLINE_KEY_BYTES:
        body = (len(payload), hashlib.blake2b(payload, digest_size=16).digest())
    return (msg.topic, body, msg.correlation_data, msg.response_topic)


class Link(Protocol):
    """What the ledger needs from the broker: the reply side and its request session
    (bridge.lanes.LaneLink)."""

    def publish(self, out: Outbound) -> int | None: ...  # mid to await, or None when handed over
    def ack(self, mid: int, qos: int) -> None: ...
    @property
    def can_publish(self) -> bool: ...  # the reply connection is up
    @property
    def can_ack(self) -> bool: ...  # the request connection is up


@dataclass(eq=False, slots=True)
class Held:
    """A request from its arrival until it is acknowledged (the dispatcher's Job extends it)."""

    msg: Inbound
    stored: str | None = None  # key of its reply in the reply store
    orphaned: bool = False  # its packet id now names another message: never acknowledge
    ack_due: bool = False  # finished, to be acknowledged when the broker's copy arrives
    copy_due: bool = False  # the session resumed: the broker will redeliver this request


class Ledger:
    """Packet ids of held requests and awaited replies; publishes, parks and acknowledges.

    ``on_done(held)`` runs once per held request, when it no longer counts as in flight
    (answered, and acknowledged or due to be on its copy).
    """

    def __init__(self, link: Link, replies: ReplyStore | None, on_done: Callable[[Held], None]) -> None:
        self._link = link
        self._replies = replies
        self._on_done = on_done
        self._running: dict[int, Held] = {}  # request mid -> held (QoS >= 1)
        self._awaiting: dict[int, Held] = {}  # reply mid -> held
        self._parked: list[tuple[Held, Outbound]] = []  # while the reply connection is down
        # Acknowledged requests (time, message or its key), for the resume window.
        self._recent: deque[tuple[float, Inbound | CopyKey]] = deque(maxlen=RECENT_ACKS)
        self._window: dict[CopyKey, list[Held]] | None = None  # held requests awaiting their copy
        self._window_misses = 0
        self._acked_copies: Counter[CopyKey] = Counter()  # acknowledged shortly before the drop
        self._acked_until = 0.0

    # -- arrival ------------------------------------------------------------------------------
    def absorb(self, msg: Inbound) -> bool:
        """True when ``msg`` is the broker's copy of a request already held or just answered
        (nothing to run: it is acknowledged with its own packet id, once)."""
        held = self._running.get(msg.mid)
        if held is not None and copy_key(msg) == copy_key(held.msg):  # hashing only when a held id comes again
            # The same message again (aedes may send it twice right after a resume).
            self._take_copy(held, msg)
            return True
        if self._window is not None or self._acked_copies:
            return self._absorb_in_window(msg)
        if held is not None:
            # Another message with the packet id of held work: the broker lost its state (a
            # restart from an older snapshot).  The old one must not acknowledge this one.
            del self._running[msg.mid]
            held.orphaned = True
        return False

    def _absorb_in_window(self, msg: Inbound) -> bool:
        key = copy_key(msg)
        waiting = self._window.get(key) if self._window else None
        if waiting:
            self._take_copy(waiting[0], msg)
            return True
        if self._acked_copies:
            if time.monotonic() > self._acked_until:
                self._expire_acked()
                return self.absorb(msg)  # as outside the window
            elif self._acked_copies[key] > 0:
                self._acked_copies[key] -= 1
                log.debug("copy of a request acknowledged before the drop, on %s: acknowledged again", msg.topic)
                self._link.ack(msg.mid, msg.qos)
                return True
        # A new message.
        self._window_misses += 1
        if self._window_misses > WINDOW_SLACK:
            self._close_window()
            self._expire_acked()
        held = self._running.get(msg.mid)
        if held is not None:
            del self._running[msg.mid]
            if not held.copy_due:
                held.orphaned = True  # delivered on this connection: the broker lost it
            # else its old id now names this message: it acknowledges its copy's id
        return False

    def _take_copy(self, held: Held, msg: Inbound) -> None:
        """``msg`` is the broker's copy of ``held``: from now on ``held`` answers to its id."""
        if held.copy_due and self._window:
            key = copy_key(held.msg)
            waiting = self._window.get(key, [])
            if held in waiting:
                waiting.remove(held)
                if not waiting:
                    del self._window[key]
            if not self._window:
                self._window = None  # every copy came
        if self._running.get(held.msg.mid) is held:
            del self._running[held.msg.mid]
        held.msg = msg
        held.copy_due = False
        if held.ack_due:  # answered already: acknowledge the copy now
            held.ack_due = False
            self._ack(msg)
            return
        other = self._running.get(msg.mid)
        if other is not None and other is not held and not other.copy_due:
            other.orphaned = True
        self._running[msg.mid] = held

    def _expire_acked(self) -> None:
        self._acked_until = 0.0
        if self._acked_copies:
            log.debug("%d request(s) acknowledged before the drop were not resent: their acknowledgement arrived",
                      sum(self._acked_copies.values()))
            self._acked_copies.clear()

    def _close_window(self) -> None:
        """No more copies are expected: requests the broker did not resend (amqtt does not)
        are answered but never acknowledge an id that may name another message now."""
        lost = 0
        for waiting in (self._window or {}).values():
            for held in waiting:
                lost += 1
                held.orphaned, held.copy_due, held.ack_due = True, False, False
                if self._running.get(held.msg.mid) is held:
                    del self._running[held.msg.mid]
        self._window = None
        if lost:
            log.warning("the broker did not redeliver %d unacknowledged request(s) after resuming the session; "
                        "they were answered once and are not acknowledged", lost)

    def hold(self, held: Held) -> Outbound | None:
        """Start holding a request; return the reply stored for it before a restart, if any
        (the function must not run again: send that reply)."""
        msg = held.msg
        if not msg.qos:
            return None
        self._running[msg.mid] = held
        if self._replies:
            key = request_key(msg)
            stored = self._replies.take(key)
            if stored is not None:
                held.stored = key
                return stored
        return None

    def ignore(self, msg: Inbound) -> None:
        """A request that is answered by nothing (no route): acknowledge it now."""
        self._ack(msg)

    # -- replying -----------------------------------------------------------------------------
    def send(self, held: Held, out: Outbound | None) -> None:
        """Publish the reply (if any), then acknowledge; park both while replies cannot go out."""
        if out is not None and not self._link.can_publish:
            # An ack queued now would be lost with the connection, and paho would keep a QoS
            # >= 1 reply only in memory: park it, durably when the request will be redelivered.
            self._parked.append((held, out))
            log.info("reply for %s parked until the broker is back", held.msg.topic)
            if held.msg.qos and self._replies is not None and held.stored is None:
                held.stored = request_key(held.msg)
                self._replies.save(held.stored, out)
            return
        mid = self._link.publish(out) if out is not None else None
        if mid is not None and held.msg.qos:
            self._awaiting[mid] = held
        else:
            self._done(held)

    @property
    def parked(self) -> int:
        """Replies waiting for the reply connection."""
        return len(self._parked)

    def connected(self) -> None:
        """The reply connection is (back) up: parked replies go out, then their requests are acked."""
        parked, self._parked = self._parked, []
        if parked:
            log.info("publishing %d repl(ies) made while the broker was away", len(parked))
        for held, out in parked:
            self.send(held, out)

    def published(self, mid: int, refusal: str | None = None) -> bool:
        """The broker acknowledged reply ``mid``: acknowledge its request.  False when no
        request of this ledger awaited that reply (another lane's).

        A reply the broker refused (``refusal``: its reason, e.g. not authorized, too large)
        is logged and its request acknowledged all the same: sent again, it would be refused
        again, and a redelivered request would run again for nothing.
        """
        held = self._awaiting.pop(mid, None)
        if held is None:
            return False
        if refusal is not None:
            log.warning("the broker refused the reply to a request on %s: %s; the request is acknowledged "
                        "without a reply", held.msg.topic, refusal)
        self._done(held)
        return True

    def _done(self, held: Held) -> None:
        msg = held.msg
        if msg.qos and not held.orphaned:
            if held.copy_due or not self._link.can_ack:
                held.ack_due = True  # acknowledged when its copy arrives, see absorb()
            else:
                if self._running.get(msg.mid) is held:
                    del self._running[msg.mid]
                self._ack(msg)
        if held.stored is not None and self._replies is not None:
            self._replies.forget(held.stored)
        self._on_done(held)

    def _settle(self, held: Held) -> None:
        """Acknowledge finished QoS 2 work whose acknowledgement was deferred (``ack_due``)."""
        held.ack_due = False
        if self._running.get(held.msg.mid) is held:
            del self._running[held.msg.mid]
        self._ack(held.msg)

    def _ack(self, msg: Inbound) -> None:
        if msg.qos:
            self._link.ack(msg.mid, msg.qos)
            # Remembered in case the connection drops before the broker reads it.
            self._recent.append((time.monotonic(), msg if len(msg.payload) <= INLINE_KEY_BYTES else copy_key(msg)))
            if self._acked_until:
                # Shortly after a resume aedes may deliver a message a second time after it
                # was acknowledged (same packet id, no DUP): one more copy to expect.
                self._acked_copies[copy_key(msg)] += 1

    # -- the request connection's session -----------------------------------------------------
    def session_lost(self) -> None:
        """The broker started a fresh session: pending packet ids now name other messages.

        Work in progress still gets its reply, but must never acknowledge its old id.
        """
        for held in self._held():
            held.orphaned, held.copy_due, held.ack_due = True, False, False
        self._running.clear()
        self._window = None
        self._acked_copies.clear()
        self._acked_until = 0.0
        self._recent.clear()

    def session_resumed(self, last_read: float | None = None) -> None:
        """The request connection resumed its session after a drop: the resume window opens.

        The broker now resends every QoS 1 request not yet acknowledged (held ones, and those
        acknowledged less than :data:`ACK_MARGIN` seconds before ``last_read``, the last read
        from the dropped connection).  QoS 2 ones are not sent again (the broker resends only
        its PUBREL): their ids stay valid, and finished ones are completed now.
        """
        window: dict[CopyKey, list[Held]] = {}
        for held in self._held():
            if held.msg.qos == 1:
                held.copy_due = True
                window.setdefault(copy_key(held.msg), []).append(held)
            elif held.ack_due:
                self._settle(held)
        self._window, self._window_misses = window or None, 0
        self._acked_until = time.monotonic() + ACKED_WINDOW
        cutoff = (last_read or time.monotonic()) - ACK_MARGIN
        self._acked_copies = Counter(m if isinstance(m, tuple) else copy_key(m)
                                     for t, m in self._recent if t >= cutoff)
        self._recent.clear()
        log.debug("resume window: %d request(s) await their copy, %d were acknowledged shortly before the drop",
                  sum(len(w) for w in window.values()), sum(self._acked_copies.values()))

    def _held(self) -> list[Held]:
        """Every held request not orphaned: by packet id, and awaiting a copy."""
        seen = {id(h): h for h in self._running.values()}
        for waiting in (self._window or {}).values():
            seen.update((id(h), h) for h in waiting)
        return [h for h in seen.values() if not h.orphaned]

    def released(self, mid: int) -> None:
        """The broker resent PUBREL for QoS 2 request ``mid``, delivered before the resume:
        complete it if its work is done (the PUBCOMP was lost with the old connection)."""
        held = self._running.get(mid)
        if held is None:
            self._link.ack(mid, 2)
        elif held.ack_due:
            self._settle(held)
        # else: still running; it completes when its reply is out
