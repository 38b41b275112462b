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
* When the request connection resumes its session the broker redelivers every unacknowledged
  QoS 1 request; work in progress then acknowledges only once that copy has arrived, so the
  copy is never taken for a new request (and run again).  QoS 2 requests are not resent (the
  broker resends only PUBREL): their ids stay valid across the resume.
* When the broker starts a fresh session, pending packet ids name other messages from then on:
  work in progress is answered but never acknowledges its old id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from .message import Inbound, Outbound
from .replystore import ReplyStore, request_key

log = logging.getLogger("bridge.delivery")


class Link(Protocol):
    """What the ledger needs from the broker link (bridge.link.BrokerLink)."""

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

    # -- arrival ------------------------------------------------------------------------------
    def absorb(self, msg: Inbound) -> bool:
        """True when ``msg`` is the broker's copy of a request already held (nothing to run)."""
        held = self._running.get(msg.mid)
        if held is None:
            return False
        if msg.dup and msg.topic == held.msg.topic and msg.payload == held.msg.payload:
            # Redelivered while we are still working on it (after a reconnect): the held
            # request acknowledges this mid when it finishes, or now if it has.
            held.copy_due = False
            if held.ack_due:
                self._settle(held)
            return True
        # Another message with the packet id of held work: the broker lost its state (a
        # restart from an older snapshot).  The old one must not acknowledge this one.
        self._running.pop(msg.mid).orphaned = True
        return False

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

    def published(self, mid: int) -> None:
        """The broker acknowledged reply ``mid``: acknowledge its request."""
        held = self._awaiting.pop(mid, None)
        if held is not None:
            self._done(held)

    def _done(self, held: Held) -> None:
        msg = held.msg
        if msg.qos and self._running.get(msg.mid) is held:
            if self._link.can_ack and not held.copy_due:
                del self._running[msg.mid]
            else:
                held.ack_due = True  # acknowledged when its copy arrives, see absorb()
        if not held.orphaned and not held.ack_due:
            self._ack(msg)
        if held.stored is not None and self._replies is not None:
            self._replies.forget(held.stored)
        self._on_done(held)

    def _settle(self, held: Held) -> None:
        """Acknowledge finished work whose acknowledgement was deferred (``ack_due``)."""
        del self._running[held.msg.mid]
        self._ack(held.msg)

    def _ack(self, msg: Inbound) -> None:
        if msg.qos:
            self._link.ack(msg.mid, msg.qos)

    # -- the request connection's session -----------------------------------------------------
    def session_lost(self) -> None:
        """The broker started a fresh session: pending packet ids now name other messages.

        Work in progress still gets its reply, but must never acknowledge its old id.
        """
        for held in self._running.values():
            held.orphaned = True
        self._running.clear()

    def session_resumed(self) -> None:
        """The request connection resumed its session after a drop: the broker now redelivers
        every QoS 1 request not yet acknowledged, each with the packet id it had.  QoS 2 ones
        are not sent again (the broker resends only its PUBREL): their ids stay valid."""
        for held in list(self._running.values()):
            if held.msg.qos == 1:
                held.copy_due = True
            elif held.ack_due:
                self._settle(held)

    def released(self, mid: int) -> None:
        """The broker resent PUBREL for QoS 2 request ``mid``, delivered before the resume:
        complete it if its work is done (the PUBCOMP was lost with the old connection)."""
        held = self._running.get(mid)
        if held is None:
            self._link.ack(mid, 2)
        elif held.ack_due:
            self._settle(held)
        # else: still running; it completes when its reply is out
