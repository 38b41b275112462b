"""The bridge's link to the broker: requests arrive on one connection, replies leave on another.

Why two connections: backpressure must be able to stop reading requests outright.  On a
single connection the PUBACKs of the bridge's own replies (which finish the requests in
flight) arrive between new requests, so reading could never stop; with a broker that ignores
the Receive Maximum the bridge announces (mosquitto before 2.0.13 does once acknowledgements
flow), a QoS 1 flood then piled up in the bridge's memory instead of waiting in the broker.
Here the request connection only ever writes PUBACKs and SUBSCRIBEs, so at
``limits.max_in_flight`` it stops reading and the rest of a flood stays with the broker.

* requests: client id ``mqtt.client_id``, the persistent session holding the subscriptions
  and every queued request; it announces ``limits.max_in_flight`` as Receive Maximum.
* replies: client id ``mqtt.client_id`` + ``-replies``, publishes replies and reads their
  PUBACKs; it subscribes to nothing.

The dispatcher sees one :class:`BrokerLink`: publish on one side, acknowledge on the other.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

from .config import MqttConfig
from .connecting import ProtocolChoice
from .message import Inbound, Outbound, Subscription
from .promises import SessionMarker, check_receive_maximum, session_not_kept
from .transport import Connection

log = logging.getLogger("bridge.transport")

REPLIES_SUFFIX = "-replies"
# Room above limits.max_payload in the Maximum Packet Size the request connection announces:
# topic, response topic, correlation data and user properties (at most 64 KiB each are
# accepted, see bridge.codec) and the fixed headers.
PACKET_HEADROOM = 4 * 65_538 + 1024
MAX_PACKET_SIZE = 268_435_455  # the largest MQTT allows


def reply_client_id(config: MqttConfig) -> str:
    """The client id of the reply connection (brokers with per-client ACLs must allow it)."""
    return config.client_id + REPLIES_SUFFIX


def max_packet_size(max_payload: int) -> int:
    """The MQTT 5 Maximum Packet Size announced for ``limits.max_payload``."""
    return min(max_payload + PACKET_HEADROOM, MAX_PACKET_SIZE)


class BrokerLink:
    """Requests in, replies out, on two connections to the same broker."""

    def __init__(
        self,
        config: MqttConfig,
        subscriptions: list[Subscription],
        on_message: Callable[[Inbound], None],
        on_published: Callable[[int], None],
        *,
        receive_maximum: int = 256,
        max_payload: int | None = None,
        state_dir: Path | None = None,
        password: str | None = None,
        on_session_lost: Callable[[], None] | None = None,
        on_session_resumed: Callable[[float], None] | None = None,
        on_released: Callable[[int], None] | None = None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self._session_lost = on_session_lost
        self._session_resumed = on_session_resumed
        self._replies_up = on_connected
        self._max_in_flight = receive_maximum
        self._cap_checked = False
        self.protocol = ProtocolChoice(config.protocol)
        self.marker: SessionMarker | None = None
        if state_dir is not None:
            self.marker = SessionMarker(state_dir, config.client_id, f"{config.host}:{config.port}")
        self.requests = Connection(
            config, client_id=config.client_id, name="requests", protocol=self.protocol,
            subscriptions=subscriptions, on_message=on_message, on_connect=self._requests_connected,
            on_subscribed=self._subscribed, on_stale_pubrel=on_released, receive_maximum=receive_maximum,
            max_packet_size=max_packet_size(max_payload) if max_payload is not None else None, password=password,
        )
        if self.marker is not None and self.marker.subscriptions is not None:
            self.requests.subs.left_over(self.marker.subscriptions)
        self.replies = Connection(
            config, client_id=reply_client_id(config), name="replies", protocol=self.protocol,
            on_published=on_published, on_connect=self._replies_connected, password=password,
        )

    def _requests_connected(self, session_present: bool, broker_cap: int | None) -> None:
        if broker_cap is not None and not self._cap_checked:
            self._cap_checked = True
            check_receive_maximum(broker_cap, self._max_in_flight)
        if not session_present:
            if self.requests.connections > 1:
                session_not_kept(self.requests.client_id, at_start=False)
            elif self.marker is not None:
                self.marker.fresh_session()
            if self._session_lost is not None:
                self._session_lost()
        elif self._session_resumed is not None:
            # Acknowledgements sent shortly before the last read may not have reached the broker.
            self._session_resumed(self.requests.last_read)

    def _subscribed(self, subscriptions: list[Subscription]) -> None:
        if self.marker is not None:
            # Under MQTT 3.1.1 there is no session expiry: the broker keeps sessions as configured.
            expiry = self.requests.config.session_expiry if self.protocol.v5 else None
            self.marker.session_held(subscriptions, expiry)

    def _replies_connected(self, _session_present: bool, _cap: int | None) -> None:
        if self._replies_up is not None:
            self._replies_up()  # replies parked while it was down go out first
    async def run(self) -> None:
        """Keep both connections up until :meth:`close`.  The reply connection comes up first,
        so the first requests (a backlog queued in the broker) are answered at once."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.replies.run(), name="mqtt-replies")
            await self.replies.connected.wait()
            group.create_task(self.requests.run(), name="mqtt-requests")

    async def ready(self) -> None:
        """Wait until both connections are up and every subscription is acknowledged."""
        await self.replies.connected.wait()
        await self.requests.connected.wait()

    # -- what the dispatcher uses -------------------------------------------------------------
    def publish(self, out: Outbound) -> int | None:
        return self.replies.publish(out)

    def ack(self, mid: int, qos: int) -> None:
        self.requests.ack(mid, qos)

    @property
    def can_publish(self) -> bool:
        return self.replies.is_connected

    @property
    def can_ack(self) -> bool:
        return self.requests.is_connected

    def flush(self) -> None:
        self.replies.flush()
        self.requests.flush()

    def pause(self) -> None:
        """Stop reading requests (backpressure): the broker keeps the rest."""
        self.requests.set_reading(False)

    def resume(self) -> None:
        self.requests.set_reading(True)

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        self.requests.set_subscriptions(subscriptions)

    async def close(self, timeout: float = 5.0) -> None:
        """Disconnect both; the request connection first, after its last acknowledgements."""
        await self.requests.close(timeout)
        await self.replies.close(timeout)
        if self.marker is not None and self.requests.connections:
            self.marker.stopped()
