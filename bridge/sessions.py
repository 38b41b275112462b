"""Request sessions: each route reads its requests on a persistent MQTT session of its own.

Why one per route: a broker delivers a session's messages in order, so on a shared session a
request for a fast route waits behind every message queued before it, a flood on another
route included (thousands of requests, seconds).  With a session per route, the broker queues
each route's requests apart, and a route whose share of ``limits.max_in_flight`` is full stops
reading only its own session.

* Client ids: the first session has ``mqtt.client_id``, the N-th (N >= 2) ``mqtt.client_id``
  + ``-sN`` (brokers with per-client ACLs must allow them).  A configuration with one route
  has exactly the one session it always had.
* Routes are spread over the sessions in order (route i on session i mod n).  There are as
  many sessions as routes, but never more than ``limits.max_in_flight`` (each needs a share
  of at least one); the count is fixed at start.  A reload keeps each route's filter on the
  session that holds it and puts new ones on the sessions with fewest (:func:`spread`):
  a filter moved from one session to another would leave a moment in which no session is
  subscribed, and a QoS 1 request published then would be lost.
* ``limits.max_in_flight`` is split between the sessions (:func:`share`); each announces its
  share as Receive Maximum.
* A session an earlier run had beyond today's count (fewer routes now) may still queue
  requests, published while the bridge was away, for a filter another session serves now:
  it is connected once more, subscribed to nothing, until the broker has delivered them all
  (a marker round trip, as when leaving a share group), then closed for good
  (:meth:`BrokerLink.drain <bridge.link.BrokerLink>`).

Leaving share groups (:meth:`RequestSession.leave`, on SIGTERM): the broker hands a shared
subscription's messages to the members' sessions, also to one that is away, so a bridge that
stops without unsubscribing keeps receiving its share (answered when it comes back).  To leave
for good, a session unsubscribes its shared filters and keeps serving until a marker it
publishes to its own topic ``iot-bridge/leave/<client_id>``, queued behind everything the
broker had already given it, comes back: then nothing of the group's waits in it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable

from .config import MqttConfig
from .connecting import ProtocolChoice
from .message import Inbound, Outbound, Subscription
from .promises import SessionMarker, check_receive_maximum, session_not_kept
from .routing import is_shared
from .transport import Connection

log = logging.getLogger("bridge.transport")

LEAVE_PREFIX = "iot-bridge/leave/"


def session_client_id(client_id: str, index: int) -> str:
    """The client id of request session ``index`` (0-based)."""
    return client_id if index == 0 else f"{client_id}-s{index + 1}"


def session_count(routes: int, max_in_flight: int) -> int:
    """How many request sessions serve ``routes`` routes."""
    return max(1, min(routes, max_in_flight))


def share(total: int, count: int, index: int) -> int:
    """Session ``index``'s part of ``total`` split between ``count`` sessions (the first ones
    get one more when it does not divide): the parts add up to ``total``."""
    return total // count + (1 if index < total % count else 0)


def spread(subscriptions: list[Subscription], current: list[list[Subscription]]) -> list[list[Subscription]]:
    """The subscriptions over the sessions holding ``current``: a filter stays on the session
    that has it, a new one goes to the (first) session with fewest.  At start every session
    holds nothing, so route i lands on session i mod n."""
    where = {sub.topic: i for i, subs in enumerate(current) for sub in subs}
    groups: list[list[Subscription]] = [[] for _ in current]
    new = []
    for sub in subscriptions:
        i = where.get(sub.topic)
        if i is None:
            new.append(sub)
        else:
            groups[i].append(sub)
    for sub in new:
        min(groups, key=len).append(sub)
    return groups


def leave_topic(client_id: str) -> str:
    # Wildcards are not allowed in a topic name: a client id holding one gets "_" instead.
    return LEAVE_PREFIX + "".join("_" if c in "+#\x00" else c for c in client_id)


class RequestSession:
    """One persistent session on which requests arrive; it writes only acknowledgements,
    SUBSCRIBEs (and one marker when it leaves a share group), so at its share of
    ``limits.max_in_flight`` it can stop reading outright and the rest waits in the broker.

    Its callbacks: ``deliver(msg)`` for each request, ``lost()`` when the broker started a
    fresh session, ``resumed(last_read)`` when it resumed one after a drop, ``released(mid)``
    for a PUBREL of a QoS 2 request delivered before the drop.
    """

    def __init__(
        self,
        config: MqttConfig,
        index: int,
        subscriptions: list[Subscription],
        *,
        protocol: ProtocolChoice,
        deliver: Callable[[Inbound], None],
        receive_maximum: int,
        max_packet_size: int | None = None,
        state_dir: Path | None = None,
        password: str | None = None,
        lost: Callable[[], None] | None = None,
        resumed: Callable[[float], None] | None = None,
        released: Callable[[int], None] | None = None,
        read_done: Callable[[], None] | None = None,
    ) -> None:
        self.index = index
        self.client_id = session_client_id(config.client_id, index)
        self.leave_topic = leave_topic(self.client_id)
        self.protocol = protocol
        self._deliver, self._lost, self._resumed = deliver, lost, resumed
        self._receive_maximum = receive_maximum
        self._cap_checked = False
        self._marker: bytes | None = None
        self._left = asyncio.Event()
        self.session_marker: SessionMarker | None = None
        if state_dir is not None:
            self.session_marker = SessionMarker(state_dir, self.client_id, f"{config.host}:{config.port}")
        name = "requests" if index == 0 else f"requests-{index + 1}"
        self.connection = Connection(
            config, client_id=self.client_id, name=name, protocol=protocol, subscriptions=subscriptions,
            on_message=self._on_request, on_connect=self._connected, on_subscribed=self._subscribed,
            on_stale_pubrel=released, on_read_done=read_done, receive_maximum=receive_maximum,
            max_packet_size=max_packet_size, password=password,
        )
        self.others: set[str] = set()  # filters the other sessions hold

    def resume_left_over(self, others: set[str]) -> None:
        """Adopt what this client id's session held when the bridge last ran (its marker):
        filters no route wants are unsubscribed at connect; ``others`` (those the other
        sessions take) only by :meth:`release_others`, once those sessions hold them."""
        self.others = others
        if self.session_marker is not None and self.session_marker.subscriptions is not None:
            self.connection.subs.left_over(self.session_marker.subscriptions, keep=others)

    def release_others(self) -> None:
        """Unsubscribe the filters the other sessions hold, in case this session still has
        them (a previous run spread the routes otherwise; unsubscribing a filter the
        session does not have is harmless)."""
        if self.others:
            self.connection.unsubscribe(self.others)

    def _connected(self, session_present: bool, broker_cap: int | None) -> None:
        if broker_cap is not None and not self._cap_checked:
            self._cap_checked = True
            check_receive_maximum(broker_cap, self._receive_maximum)
        if not session_present:
            if self.connection.connections > 1:
                session_not_kept(self.client_id, at_start=False)
            elif self.session_marker is not None:
                self.session_marker.fresh_session()
            if self._lost is not None:
                self._lost()
        elif self._resumed is not None:
            # Acknowledgements sent shortly before the last read may not have reached the broker.
            self._resumed(self.connection.last_read)

    def _subscribed(self, subscriptions: list[Subscription]) -> None:
        if self.session_marker is not None:
            # Under MQTT 3.1.1 there is no session expiry: the broker keeps sessions as configured.
            expiry = self.connection.config.session_expiry if self.protocol.v5 else None
            self.session_marker.session_held(subscriptions, expiry)

    def _on_request(self, msg: Inbound) -> None:
        if not msg.topic.startswith(LEAVE_PREFIX):
            self._deliver(msg)
            return
        # A leave marker is never a request: this session's own, a stale one from an earlier
        # stop, or another member's that a wide filter (such as "#") matched.
        if msg.qos:
            self.connection.ack(msg.mid, msg.qos)
        if msg.topic == self.leave_topic and self._marker is not None and msg.payload == self._marker:
            self._left.set()

    # -- what the dispatcher uses (bridge.delivery.Link, with the reply side of the link) -------
    def ack(self, mid: int, qos: int) -> None:
        self.connection.ack(mid, qos)

    @property
    def can_ack(self) -> bool:
        return self.connection.is_connected

    def pause(self) -> None:
        """Stop reading requests (backpressure): the broker keeps the rest."""
        self.connection.set_reading(False)

    def resume(self) -> None:
        self.connection.set_reading(True)

    @property
    def shared(self) -> bool:
        return any(is_shared(s.topic) for s in self.connection.subscriptions)

    async def leave(self, timeout: float) -> bool:
        """Leave this session's share groups: see the module docstring.  True once the broker
        handed over all it had given this session; False when there was nothing to leave or
        the marker did not come back within ``timeout`` seconds."""
        subs = self.connection.subscriptions
        keep = [s for s in subs if not is_shared(s.topic)]
        if len(keep) == len(subs):
            return False
        log.info("%s: leaving the share group(s): unsubscribing %d shared filter(s)", self.client_id,
                 len(subs) - len(keep))
        if not await self._queue_through(keep, timeout):
            log.warning("%s: left the share group(s), but the broker did not confirm within %g s; requests "
                        "it had queued for this session wait for the next start", self.client_id, timeout)
            return False
        return True

    async def drain(self, timeout: float) -> bool:
        """Take every request this session still queues (it serves no route any more): True
        once the broker delivered them all (the rest of the work is the dispatcher's)."""
        return await self._queue_through([], timeout)

    async def _queue_through(self, keep: list[Subscription], timeout: float) -> bool:
        """Subscribe to ``keep`` only, and wait until a marker published behind everything the
        broker queued for this session comes back (False: not connected, or not in time)."""
        conn = self.connection
        if not conn.is_connected:
            log.warning("%s: not connected: what the broker queued for it waits for the next start", self.client_id)
            return False
        self._marker = os.urandom(16).hex().encode()
        self._left.clear()
        # One connection, so the broker handles these in order: unsubscribe, subscribe to the
        # marker's topic, then the marker goes to the end of this session's queue.
        conn.set_subscriptions([*keep, Subscription(self.leave_topic, 1)])
        conn.publish(Outbound(self.leave_topic, self._marker, 1))
        try:
            async with asyncio.timeout(timeout):
                await self._left.wait()
            return True
        except TimeoutError:
            return False
        finally:
            conn.set_subscriptions(keep)  # the marker's topic is unsubscribed again

    async def close(self, timeout: float, *, drained: bool = False) -> None:
        """Disconnect; ``drained``: this session serves no route and has nothing queued, so
        the next start need not connect it (its marker goes)."""
        await self.connection.close(timeout)
        if self.session_marker is not None and self.connection.connections:
            if drained:
                self.session_marker.forget()
            else:
                self.session_marker.stopped()
