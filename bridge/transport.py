"""One MQTT connection on the asyncio loop: the only module that imports paho-mqtt.

paho runs on the loop through its external-loop hooks, so every paho call happens on one
thread, without locks.  Incoming messages become :class:`~bridge.message.Inbound` here, once.
:mod:`bridge.link` pairs two connections: one for requests, one for replies.

Session rules (what peers get wrong, see docs/reliability.md): a stable client id, clean start
off and a session expiry; handlers registered before connecting; subscriptions renewed on
every connect; manual acknowledgements; TCP_NODELAY (QoS 1 round trips otherwise stall ~40 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .config import MqttConfig
from .errors import TransportError
from .message import Inbound, Outbound, Subscription, pack_publish_properties

log = logging.getLogger("bridge.transport")

READ_BURST = 64  # packets read per socket wake-up at most, so writes and timers still run


class _PublishProperties(Properties):
    """PUBLISH properties packed directly from an Outbound.

    paho's Properties validates every attribute assignment; building one per reply cost more
    than the rest of the reply path together.  The wire format is MQTT v5 section 2.2.2.
    """

    def __init__(self, out: Outbound) -> None:
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", pack_publish_properties(out))

    def pack(self) -> bytes:
        return self._packed  # type: ignore[no-any-return]


class _Client(paho.Client):
    """paho's client, reporting a PUBREL for a QoS 2 message it already delivered.

    With manual acks paho ignores those; they come after a resumed session when the PUBCOMP
    was lost with the old connection, and unanswered they would stay in flight forever.
    """

    on_stale_pubrel: Callable[[int], None] | None = None

    def _handle_pubrel(self) -> paho.MQTTErrorCode:
        mid = int.from_bytes(self._in_packet["packet"][:2], "big")
        known = mid in self._in_messages
        rc = super()._handle_pubrel()
        if not known and self.on_stale_pubrel is not None:
            self.on_stale_pubrel(mid)
        return rc


class Connection:
    """One persistent MQTT session, driven by the running asyncio loop.

    ``on_connect(session_present)`` runs after every accepted CONNACK, before subscribing.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        name: str,
        subscriptions: list[Subscription] | None = None,
        on_message: Callable[[Inbound], None] | None = None,
        on_published: Callable[[int], None] | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_stale_pubrel: Callable[[int], None] | None = None,
        receive_maximum: int | None = None,
        password: str | None = None,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.name = name
        self.subscriptions = subscriptions or []
        self._deliver = on_message
        self._published = on_published
        self._connect_cb = on_connect
        self._v5 = config.protocol == 5
        self._receive_maximum = receive_maximum
        self._loop: asyncio.AbstractEventLoop | None = None
        self._want_reading = True
        self._reader_on = False
        self._writer_armed = False
        self._flush_scheduled = False
        self._misc_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._down = asyncio.Event()
        self._down.set()
        self.connected = asyncio.Event()  # set after CONNACK and every SUBACK
        self._pending_subacks = 0
        self._unsubscribe: set[str] = set()  # filters dropped by a reload, not yet unsubscribed
        self.connections = 0  # successful connects so far (reconnects count)
        self._up_now = False  # CONNACK accepted, no disconnect since (paho's own flag lags)
        self._client = self._make_client(password)
        self._client.on_stale_pubrel = on_stale_pubrel

    # -- setup --------------------------------------------------------------------------------
    def _make_client(self, password: str | None) -> _Client:
        c = self.config
        client = _Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        client.suppress_exceptions = True  # a bug in a callback must not kill the network loop
        if c.username is not None:
            client.username_pw_set(c.username, password)
        if c.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(c.tls.ca_file) if c.tls.ca_file else None,
                    certfile=str(c.tls.cert_file) if c.tls.cert_file else None,
                    keyfile=str(c.tls.key_file) if c.tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise TransportError(f"mqtt.tls: cannot load certificates: {exc}") from exc
            client.tls_insecure_set(c.tls.insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _connect_properties(self) -> Properties | None:
        if not self._v5:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry
        if self._receive_maximum is not None:
            # A compliant broker never sends more unacknowledged QoS >= 1 messages than this.
            props.ReceiveMaximum = min(self._receive_maximum, 65535)
        return props

    # -- the connection loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, and reconnect with capped exponential backoff, until :meth:`close`."""
        self._loop = asyncio.get_running_loop()
        c = self.config
        delay = c.reconnect_min_delay
        while not self._stopping:
            accepted_before = self.connections
            try:
                await self._connect_once()
            except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
                wait = delay * random.uniform(0.8, 1.2)
                log.warning("%s connection: cannot connect to %s:%d (%s); retrying in %.1f s",
                            self.name, c.host, c.port, exc, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, c.reconnect_max_delay)
                continue
            await self._down.wait()
            if self._stopping:
                break
            # Reset the backoff only after a connection the broker accepted.
            accepted = self.connections > accepted_before
            delay = c.reconnect_min_delay if accepted else min(delay * 2, c.reconnect_max_delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _connect_once(self) -> None:
        c = self.config
        # A non-blocking probe first: paho's connect would block the loop on an unreachable host.
        _, writer = await asyncio.wait_for(asyncio.open_connection(c.host, c.port), timeout=10)
        writer.close()
        self._down.clear()
        try:
            if self.connections == 0:
                self._client.connect(
                    c.host, c.port, c.keepalive,
                    clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=self._connect_properties(),
                )
            else:
                self._client.reconnect()
        except BaseException:
            self._down.set()
            raise
        self._schedule_misc()

    def _schedule_misc(self) -> None:
        assert self._loop is not None
        if self._client.socket() is None:
            return
        self._client.loop_misc()  # keepalive pings, and a dead connection is noticed
        self._misc_timer = self._loop.call_later(1.0, self._schedule_misc)

    # -- paho callbacks (all on the loop thread) ----------------------------------------------
    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("%s connection: broker refused the connection: %s", self.name, reason)
            return
        self._up_now = True
        self.connections += 1
        if self._v5 and props is not None and getattr(props, "ReceiveMaximum", None):
            # paho keeps its own in-flight limit for our publishes; follow the broker's.
            client._max_inflight_messages = props.ReceiveMaximum  # noqa: SLF001
        log.info("%s connection: connected to %s:%d (session %s)", self.name, self.config.host,
                 self.config.port, "resumed" if flags.session_present else "new")
        if self._connect_cb is not None:
            self._connect_cb(bool(flags.session_present))
        self._subscribe_all(client)
        if self._pending_subacks == 0:
            self._up()

    def _up(self) -> None:
        self.connected.set()
        self._apply_reading()

    def _subscribe_all(self, client: paho.Client) -> None:
        if self._unsubscribe:
            client.unsubscribe(sorted(self._unsubscribe))
            self._unsubscribe.clear()
        self._pending_subacks = 0
        for index, sub in enumerate(self.subscriptions, start=1):
            if self._v5:
                props_sub = Properties(PacketTypes.SUBSCRIBE)
                # The id comes back on each message: it names the route without matching.
                props_sub.SubscriptionIdentifier = index
                # Retained requests are delivered only when the subscription is new.
                options = SubscribeOptions(qos=sub.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                rc, _ = client.subscribe(sub.topic, options=options, properties=props_sub)
            else:
                rc, _ = client.subscribe(sub.topic, qos=sub.qos)
            if rc == paho.MQTT_ERR_SUCCESS:
                self._pending_subacks += 1

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        """Replace the subscriptions (a reload) on the same session: unsubscribe dropped
        filters, subscribe every wanted one again (renewing its options and id)."""
        wanted = {s.topic for s in subscriptions}
        self._unsubscribe |= {s.topic for s in self.subscriptions} - wanted
        self.subscriptions = subscriptions
        if self._up_now:
            self._subscribe_all(self._client)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        for reason in reasons:
            if reason.is_failure:
                log.error("subscription refused by the broker: %s", reason)
        self._pending_subacks -= 1
        if self._pending_subacks <= 0:
            self._up()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._up_now = False
        self.connected.clear()
        if not self._stopping:
            log.warning("%s connection: disconnected from the broker: %s", self.name, reason)
        self._down.set()

    def _on_message(self, client: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        try:
            topic = m.topic
        except UnicodeDecodeError:
            log.warning("message with a topic that is not UTF-8; acknowledged and dropped")
            if m.qos:
                client.ack(m.mid, m.qos)
            return
        msg = Inbound(topic, m.payload, m.qos, m.mid, bool(m.retain), bool(m.dup))
        props = m.properties
        if props is not None:
            msg.response_topic = getattr(props, "ResponseTopic", None)
            msg.correlation_data = getattr(props, "CorrelationData", None)
            msg.content_type = getattr(props, "ContentType", None)
            msg.user_properties = getattr(props, "UserProperty", None) or []
            msg.subscription_ids = getattr(props, "SubscriptionIdentifier", None) or []
        try:
            if self._deliver is None:
                raise RuntimeError(f"the {self.name} connection takes no messages")
            self._deliver(msg)
        except Exception:
            log.exception("dispatch failed for a message on %r; acknowledged", msg.topic)
            if msg.qos:
                client.ack(msg.mid, msg.qos)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        if self._published is not None:
            self._published(mid)

    # -- the socket on the event loop ---------------------------------------------------------
    def _on_socket_open(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.add_reader(sock, self._read)  # always: CONNACK and SUBACKs must be read
        self._reader_on = True

    def set_reading(self, on: bool) -> None:
        """Read from the broker, or leave what it sends in TCP and the broker (at once, also
        mid-burst); while (re)connecting, reading stays on until CONNACK and every SUBACK."""
        self._want_reading = on
        if on or self.connected.is_set():
            self._apply_reading()

    def _apply_reading(self) -> None:
        on = self._want_reading
        sock = self._client.socket()
        if on == self._reader_on or sock is None or self._loop is None:
            return
        if on:
            self._loop.add_reader(sock, self._read)
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                self._loop.call_soon(self._read)  # decrypted bytes the selector cannot see
        else:
            self._loop.remove_reader(sock)
        self._reader_on = on

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._reader_on = False
        if self._writer_armed:
            self._loop.remove_writer(sock)
            self._writer_armed = False
        if self._misc_timer is not None:
            self._misc_timer.cancel()

    def _read(self) -> None:
        client = self._client
        # loop_read() reads one packet when nothing is in flight and does not say whether the
        # socket is drained; the packet reader does.  A burst saves a loop iteration per message.
        for _ in range(READ_BURST):
            rc = client._packet_read()  # noqa: SLF001 (paho 2.x, pinned below 3)
            if rc == paho.MQTT_ERR_AGAIN:
                break
            if rc != paho.MQTT_ERR_SUCCESS:
                client._loop_rc_handle(rc)  # noqa: SLF001
                return
            if client.socket() is None or not self._reader_on:
                return
        sock = client.socket()
        # TLS may hold decrypted bytes the selector cannot see.
        while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock and self._reader_on:
            client.loop_read()

    def _on_register_write(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        # Coalesce: many publishes in one loop iteration share one write.
        if not (self._writer_armed or self._flush_scheduled) and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _on_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        if self._writer_armed and self._loop is not None:
            self._loop.remove_writer(sock)
            self._writer_armed = False

    def flush(self) -> None:
        """Write what is queued now rather than at the next loop iteration (saves latency)."""
        if self._flush_scheduled:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        client = self._client
        sock = client.socket()
        if sock is None or self._writer_armed or not client.want_write():
            return
        self._writer_armed = True  # inside loop_write, register_write must not reschedule
        client.loop_write()
        if client.want_write() and client.socket() is sock:
            assert self._loop is not None
            self._loop.add_writer(sock, self._flush_writable)  # the socket buffer is full
        else:
            self._writer_armed = False

    def _flush_writable(self) -> None:
        self._client.loop_write()  # unregister_write removes the writer once drained

    # -- what the bridge uses -----------------------------------------------------------------
    def publish(self, out: Outbound) -> int | None:
        """Hand a message to paho; return its mid when the broker's ack is to be awaited."""
        props = None
        if self._v5 and (out.correlation_data is not None or out.content_type or out.user_properties):
            props = _PublishProperties(out)
        info = self._client.publish(out.topic, out.payload, out.qos, properties=props)
        if out.qos and info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            return info.mid  # paho resends it after a reconnect
        if info.rc != paho.MQTT_ERR_SUCCESS:
            log.warning("reply to %r not published: %s", out.topic, paho.error_string(info.rc))
        return None

    @property
    def is_connected(self) -> bool:
        # Not paho's is_connected(): after a DISCONNECT from the broker or a keepalive timeout
        # it stays true until the next reconnect, and what is sent meanwhile is dropped.
        return self._up_now

    def ack(self, mid: int, qos: int) -> None:
        self._client.ack(mid, qos)

    async def close(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (the broker keeps the session until it expires)."""
        self._stopping = True
        if self._client.socket() is not None:
            self._client.disconnect()
            try:
                async with asyncio.timeout(timeout):
                    await self._down.wait()
            except TimeoutError:
                log.warning("%s connection: the broker did not close it in %g s", self.name, timeout)
        self._down.set()
        if self._misc_timer is not None:
            self._misc_timer.cancel()
