"""Lanes: the dispatcher's side of each request session (bridge.sessions).

A lane counts the requests its session delivered that are still in flight, against its share
of ``limits.max_in_flight`` and ``limits.max_in_flight_bytes``, and pauses reading that
session alone at either bound: a flood on one route waits in the broker without holding up
the routes read on other sessions.  Each lane has its own :class:`~bridge.delivery.Ledger`,
since packet ids and session resumes belong to one session.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .delivery import Held, Ledger
from .message import Outbound
from .replystore import ReplyStore
from .sessions import share


class Session(Protocol):
    """What a lane needs of its request session (bridge.sessions.RequestSession)."""

    def ack(self, mid: int, qos: int) -> None: ...
    @property
    def can_ack(self) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class Replies(Protocol):
    """The reply side of the link (bridge.link.BrokerLink)."""

    def publish(self, out: Outbound) -> int | None: ...
    @property
    def can_publish(self) -> bool: ...


class LaneLink:
    """The ledger's view of the broker (bridge.delivery.Link): replies out on the shared
    reply connection, acknowledgements on the lane's own session."""

    def __init__(self, replies: Replies, session: Session) -> None:
        self._replies, self._session = replies, session

    def publish(self, out: Outbound) -> int | None:
        return self._replies.publish(out)

    def ack(self, mid: int, qos: int) -> None:
        self._session.ack(mid, qos)

    @property
    def can_publish(self) -> bool:
        return self._replies.can_publish

    @property
    def can_ack(self) -> bool:
        return self._session.can_ack


@dataclass(eq=False)
class Lane:
    index: int
    session: Session
    ledger: Ledger
    max: int = 1
    max_bytes: int = 1
    in_flight: int = 0
    in_flight_bytes: int = 0
    paused: bool = False
    serving: bool = True  # False once its session is closed for good (bridge.link drains)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # nothing of it in flight

    def __post_init__(self) -> None:
        self.idle.set()

    @classmethod
    def open(cls, index: int, replies: Replies, session: Session, store: ReplyStore | None,
             on_done: Callable[[Held], None]) -> "Lane":
        return cls(index, session, Ledger(LaneLink(replies, session), store, on_done))

    def configure(self, count: int, position: int, max_in_flight: int, max_bytes: int) -> None:
        """This lane's share of the bounds: the ``position``-th of ``count`` open lanes."""
        self.max = max(share(max_in_flight, count, position), 1)
        self.max_bytes = max(share(max_bytes, count, position), 1)
        if self.paused and self.in_flight < self.max and self.in_flight_bytes < self.max_bytes:
            self.paused = False  # a larger share: room again
            self.session.resume()

    def take(self, size: int) -> None:
        """A request of ``size`` payload bytes arrived on this lane's session."""
        self.in_flight += 1
        self.in_flight_bytes += size
        self.idle.clear()
        if (self.in_flight >= self.max or self.in_flight_bytes >= self.max_bytes) and not self.paused:
            self.paused = True
            self.session.pause()

    def release(self, size: int, closing: bool) -> None:
        """A request of this lane no longer counts as in flight."""
        self.in_flight -= 1
        self.in_flight_bytes -= size
        if not self.in_flight:
            self.idle.set()
        if self.paused and not closing and self.in_flight < self.max and self.in_flight_bytes < self.max_bytes:
            self.paused = False
            self.session.resume()

    def stop(self) -> None:
        """Read no more, for good (shutdown)."""
        self.paused = True
        self.session.pause()


class Lanes(list[Lane]):
    """Every request session's lane, in session order (``lanes[i]`` is session i's)."""

    def share(self, max_in_flight: int, max_bytes: int) -> None:
        """Split the bounds between the lanes whose session still serves."""
        serving = [lane for lane in self if lane.serving]
        for position, lane in enumerate(serving):
            lane.configure(len(serving), position, max_in_flight, max_bytes)

    def stop(self) -> None:
        for lane in self:
            lane.stop()

    def published(self, mid: int, refusal: str | None = None) -> None:
        """The broker acknowledged reply ``mid`` (on the reply connection, shared by all
        lanes), or refused it for the reason ``refusal``."""
        for lane in self:
            if lane.ledger.published(mid, refusal):
                return

    def replies_connected(self) -> None:
        """The reply connection is (back) up: parked replies go out."""
        for lane in self:
            lane.ledger.connected()

    @property
    def parked(self) -> int:
        """Replies waiting for the reply connection."""
        return sum(lane.ledger.parked for lane in self)
