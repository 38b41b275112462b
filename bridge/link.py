"""The bridge's link to the broker: requests arrive on request sessions, replies leave on
a connection of their own.

Why requests and replies apart: backpressure must be able to stop reading requests outright.
On a single connection the PUBACKs of the bridge's own replies (which finish the requests in
flight) arrive between new requests, so reading could never stop; with a broker that ignores
the Receive Maximum the bridge announces (mosquitto before 2.0.13 does once acknowledgements
flow), a QoS 1 flood then piled up in the bridge's memory instead of waiting in the broker.
A request session only ever writes PUBACKs and SUBSCRIBEs (and one marker when it leaves a
share group), so at its share of ``limits.max_in_flight`` it stops reading and the rest of a
flood stays with the broker.

* requests: one persistent session per route (bridge.sessions), the first with client id
  ``mqtt.client_id``; they hold the subscriptions and every queued request.
* replies: client id ``mqtt.client_id`` + ``-replies``, publishes replies and reads their
  PUBACKs; it subscribes to nothing.

The dispatcher sees one :class:`BrokerLink`: publish on the reply side, acknowledge and pause
on the request session a message came from (``link.sessions[i]``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Awaitable, Callable

from .config import MqttConfig
from .connecting import ProtocolChoice
from .message import Inbound, Outbound, Subscription
from .promises import SessionMarker
from .sessions import RequestSession, session_count, share, spread
from .transport import Connection

log = logging.getLogger("bridge.transport")

REPLIES_SUFFIX = "-replies"
# Room above limits.max_payload in the Maximum Packet Size the request connection announces:
# topic, response topic, correlation data and user properties (at most 64 KiB each are
# accepted, see bridge.codec) and the fixed headers.
PACKET_HEADROOM = 4 * 65_538 + 1024
MAX_PACKET_SIZE = 268_435_455  # the largest MQTT allows
DRAIN_TIMEOUT = 30.0  # seconds a drained session's marker may take to come back, per attempt


def reply_client_id(config: MqttConfig) -> str:
    """The client id of the reply connection (brokers with per-client ACLs must allow it)."""
    return config.client_id + REPLIES_SUFFIX


def max_packet_size(max_payload: int) -> int:
    """The MQTT 5 Maximum Packet Size announced for ``limits.max_payload``."""
    return min(max_payload + PACKET_HEADROOM, MAX_PACKET_SIZE)


class BrokerLink:
    """Requests in on the request sessions, replies out on one connection, same broker.

    The callbacks that concern one request session get its index: ``on_message(msg, i)``,
    ``on_session_lost(i)``, ``on_session_resumed(i, last_read)``, ``on_released(i, mid)``.
    """

    def __init__(
        self,
        config: MqttConfig,
        subscriptions: list[Subscription],
        on_message: Callable[[Inbound, int], None],
        on_published: Callable[[int, str | None], None],
        *,
        max_in_flight: int = 256,
        max_payload: int | None = None,
        state_dir: Path | None = None,
        password: str | None = None,
        on_session_lost: Callable[[int], None] | None = None,
        on_session_resumed: Callable[[int, float], None] | None = None,
        on_released: Callable[[int, int], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_requests_read: Callable[[], None] | None = None,
        session_idle: Callable[[int], Awaitable[None]] | None = None,
        on_drained: Callable[[int], None] | None = None,
    ) -> None:
        self._replies_up = on_connected
        self._session_idle, self._drained = session_idle, on_drained
        self._released = False  # each session dropped the filters the others hold
        self.protocol = ProtocolChoice(config.protocol)
        count = session_count(len(subscriptions), max_in_flight)
        packet_size = max_packet_size(max_payload) if max_payload is not None else None

        orphans = self._orphans(config, count, state_dir)
        total = count + len(orphans)

        def session(i: int, subs: list[Subscription]) -> RequestSession:
            return RequestSession(
                config, i, subs, protocol=self.protocol, deliver=lambda msg: on_message(msg, i),
                # At least 1 (MQTT has no Receive Maximum of 0), as each lane's share (bridge.lanes).
                receive_maximum=max(share(max_in_flight, count if i < count else total, i), 1),
                max_packet_size=packet_size,
                state_dir=state_dir, password=password,
                lost=on_session_lost and (lambda: on_session_lost(i)),
                resumed=on_session_resumed and (lambda last_read: on_session_resumed(i, last_read)),
                released=on_released and (lambda mid: on_released(i, mid)), read_done=on_requests_read)

        groups = spread(subscriptions, [[] for _ in range(count)]) + [[] for _ in orphans]
        self.sessions = [session(i, subs) for i, subs in enumerate(groups)]
        self.draining = [s for s in self.sessions if s.index >= count]
        for s, subs in zip(self.sessions, groups):
            # A filter the last run had on another session (another route order, or sessions
            # added since) is unsubscribed there only once its new session holds it (ready()):
            # make before break, so no request published meanwhile finds no subscriber.
            s.resume_left_over({sub.topic for sub in subscriptions} - {sub.topic for sub in subs})
        self.replies = Connection(
            config, client_id=reply_client_id(config), name="replies", protocol=self.protocol,
            on_published=on_published, on_connect=self._replies_connected, password=password,
        )

    @staticmethod
    def _orphans(config: MqttConfig, count: int, state_dir: Path | None) -> list[int]:
        """Indexes of sessions an earlier run had beyond ``count`` (their markers say so)."""
        if state_dir is None or not state_dir.is_dir():
            return []
        pattern = re.compile(re.escape(config.client_id) + r"-s(\d+)")
        found = {int(m.group(1)) - 1 for cid in SessionMarker.client_ids(state_dir, f"{config.host}:{config.port}")
                 if (m := pattern.fullmatch(cid))}
        return list(range(count, max(found) + 1)) if found and max(found) >= count else []

    @property
    def connections(self) -> list[Connection]:
        """Every connection: the request sessions', then the reply connection."""
        return [*(s.connection for s in self.sessions), self.replies]

    def _replies_connected(self, _session_present: bool, _cap: int | None) -> None:
        if self._replies_up is not None:
            # Replies parked while it was down go out first, but once paho has resent those
            # that were in flight at the drop (right after this callback): published from in
            # here they would go out on top of them, past the broker's Receive Maximum.
            asyncio.get_running_loop().call_soon(self._replies_up)

    async def run(self) -> None:
        """Keep every connection up until :meth:`close`.  The reply connection comes up first,
        so the first requests (a backlog queued in the broker) are answered at once."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.replies.run(), name="mqtt-replies")
            await self.replies.connected.wait()
            for s in self.sessions:
                group.create_task(s.connection.run(), name=f"mqtt-{s.connection.name}")
            for s in self.draining:
                group.create_task(self._drain(s), name=f"drain-{s.connection.name}")

    async def ready(self) -> None:
        """Wait until every connection is up and every subscription is acknowledged; then
        each session drops the filters the others hold, should it still have them."""
        for conn in self.connections:
            await conn.connected.wait()
        if not self._released and len(self.sessions) > 1:
            self._released = True
            for s in self.sessions:
                s.release_others()

    async def _drain(self, s: RequestSession) -> None:
        """Serve what an earlier run's extra session still queues, then close it for good."""
        await self.ready()  # the filters it held are the other sessions' now
        log.info("%s: no route left on this session; taking what the broker still queues for it", s.client_id)
        while not await s.drain(DRAIN_TIMEOUT):
            # Not connected, a long queue, or the broker refuses the marker (ACLs must allow
            # the client id its topic, as for leaving a share group): say so, try again.
            log.warning("%s: the broker did not hand over all it queues for this session within %g s "
                        "(publishing to %r must be allowed); trying again", s.client_id, DRAIN_TIMEOUT,
                        s.leave_topic)
            await asyncio.sleep(1.0)
        if self._session_idle is not None:
            await self._session_idle(s.index)  # its requests answered and acknowledged
        await s.close(5.0, drained=True)
        self.sessions.remove(s)
        self.draining.remove(s)
        log.info("%s: drained and closed; its in-flight share goes to the other sessions", s.client_id)
        if self._drained is not None:
            self._drained(s.index)

    # -- what the dispatcher uses -------------------------------------------------------------
    def publish(self, out: Outbound) -> int | None:
        return self.replies.publish(out)

    @property
    def can_publish(self) -> bool:
        return self.replies.is_connected

    def flush(self) -> None:
        """Write what every connection has queued (after each read burst and batch of results)."""
        for s in self.sessions:
            s.connection.flush()
        self.replies.flush()

    @property
    def subscriptions(self) -> list[Subscription]:
        return [sub for s in self.sessions for sub in s.connection.subscriptions]

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        """A reload: each filter stays on the session holding it (bridge.sessions.spread)."""
        serving = [s for s in self.sessions if s not in self.draining]
        current = [s.connection.subscriptions for s in serving]
        for s, subs in zip(serving, spread(subscriptions, current)):
            s.connection.set_subscriptions(subs)

    async def leave(self, timeout: float) -> bool:
        """Leave every share group (bridge.sessions), all sessions at once: True when every
        session that had shared filters left within ``timeout`` seconds."""
        members = [s for s in self.sessions if s.shared]
        if not members:
            return False
        left = await asyncio.gather(*(s.leave(timeout) for s in members))
        if all(left):
            log.info("left the share group(s): the other members take every new request")
        return all(left)

    async def close(self, timeout: float = 5.0) -> None:
        """Disconnect; the request sessions first, after their last acknowledgements."""
        await asyncio.gather(*(s.close(timeout) for s in self.sessions))
        await self.replies.close(timeout)
