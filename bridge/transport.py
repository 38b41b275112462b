"""One MQTT connection on the asyncio loop.

paho (bridge.mqttclient, the only module that imports it) runs on the loop through its
external-loop hooks, so every paho call happens on one thread, without locks.  Incoming
messages become :class:`~bridge.message.Inbound` once, as paho reads them.
:mod:`bridge.link` pairs two connections: one for requests, one for replies.  Opening the
socket, the protocol version, the backoff and client-id clashes are :mod:`bridge.connecting`;
the broker's promises (session, granted QoS, Receive Maximum) are :mod:`bridge.promises`.

Session rules (what peers get wrong, see docs/reliability.md): a stable client id, clean start
off and a session expiry; handlers registered before connecting; subscriptions renewed on
every connect that did not resume them; manual acknowledgements; TCP_NODELAY (QoS 1 round trips
otherwise stall ~40 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any, Callable

from . import mqttclient
from .config import MqttConfig
from .connecting import REFUSED, Backoff, ClashWatch, ProtocolChoice, keep_connected
from .errors import ConfigError
from .message import Inbound, Outbound, Subscription
from .promises import SessionSubscriptions
from .pump import Pump

log = logging.getLogger("bridge.transport")


class Connection:
    """One persistent MQTT session, driven by the running asyncio loop.

    ``on_connect(session_present, broker_receive_maximum)`` runs after every accepted CONNACK,
    before subscribing; ``on_subscribed(subscriptions)`` once every SUBACK of a connection was
    a success (the broker's session holds them).
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        name: str,
        protocol: ProtocolChoice,
        subscriptions: list[Subscription] | None = None,
        on_message: Callable[[Inbound], None] | None = None,
        on_published: Callable[[int, str | None], None] | None = None,
        on_connect: Callable[[bool, int | None], None] | None = None,
        on_subscribed: Callable[[list[Subscription]], None] | None = None,
        on_read_done: Callable[[], None] | None = None,
        on_stale_pubrel: Callable[[int], None] | None = None,
        receive_maximum: int | None = None,
        max_packet_size: int | None = None,
        password: str | None = None,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.name = name
        self.protocol = protocol
        self.subs = SessionSubscriptions(subscriptions or [])
        self._deliver = on_message
        self._published = on_published
        self._connect_cb = on_connect
        self._subscribed_cb = on_subscribed
        self._stale_pubrel = on_stale_pubrel
        self._receive_maximum = receive_maximum
        self._max_packet_size = max_packet_size
        self._password = password
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.down = asyncio.Event()
        self.down.set()
        self._connack: asyncio.Future[bool] | None = None
        self.refusal = ""  # why the last attempt got no session
        self.taken_over = False
        self.connected = asyncio.Event()  # set after CONNACK and every SUBACK
        self.connections = 0  # successful connects so far (reconnects count)
        self._up_now = False  # CONNACK accepted, no disconnect since (paho's own flag lags)
        self._clash = ClashWatch(client_id, name)
        self._client = self._make_client()
        self._pump = Pump(self._client, on_read_done)

    # -- setup --------------------------------------------------------------------------------
    def _make_client(self) -> mqttclient.Client:
        c = self.config
        v5 = self.protocol.v5
        client = mqttclient.Client(self.client_id, v5)
        client.on_stale_pubrel = self._stale_pubrel
        client.on_inbound = self._deliver_inbound
        client.on_acked = self._published
        client.version = self.protocol.version
        if c.username is not None:
            client.username_pw_set(c.username, self._password)
        if c.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(c.tls.ca_file) if c.tls.ca_file else None,
                    certfile=str(c.tls.cert_file) if c.tls.cert_file else None,
                    keyfile=str(c.tls.key_file) if c.tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls: cannot load certificates: {exc}", key="mqtt.tls") from exc
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
        props = mqttclient.connect_properties(v5, c.session_expiry, self._receive_maximum, self._max_packet_size)
        client.connect_async(c.host, c.port, c.keepalive, properties=props,
                             clean_start=False if v5 else mqttclient.CLEAN_START_FIRST_ONLY)
        return client

    # -- connecting (driven by bridge.connecting.keep_connected) ------------------------------
    async def run(self) -> None:
        """Connect, and reconnect with capped exponential backoff, until :meth:`close`."""
        self._loop = self._pump.loop = asyncio.get_running_loop()
        c = self.config
        await keep_connected(self, c.host, c.port, self.protocol,
                             Backoff(c.reconnect_min_delay, c.reconnect_max_delay), self._clash)

    def tls_context(self) -> ssl.SSLContext | None:
        return self._client.tls_context()

    def begin(self, sock: socket.socket) -> asyncio.Future[bool]:
        """Send CONNECT over ``sock``; the future says whether the broker accepted it."""
        assert self._loop is not None
        if self._client.version != self.protocol.version:
            self._client = self._pump.client = self._make_client()  # auto changed the version
        self._client.prepared_socket = sock
        self._connack = self._loop.create_future()
        self.refusal, self.taken_over = "", False
        self.down.clear()
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:
            self.refusal = f"cannot send CONNECT: {exc}"
            self._connack.set_result(False)
        self._pump.tick()
        return self._connack

    def abort(self) -> None:
        self._client.drop_socket()
        self.down.set()

    # -- paho callbacks (all on the loop thread) ----------------------------------------------
    def _on_connect(self, client: mqttclient.Client, _u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refusal = f"{REFUSED}: {reason}"
            self._settle_connack(False)
            return
        self.protocol.accepted()
        self._up_now = True
        self.connections += 1
        broker_cap = None
        if self.protocol.v5 and props is not None and getattr(props, "ReceiveMaximum", None):
            broker_cap = props.ReceiveMaximum
            # paho keeps its own in-flight limit for our publishes; follow the broker's.
            client._max_inflight_messages = broker_cap  # noqa: SLF001
        log.info("%s connection: connected to %s:%d (session %s)", self.name, self.config.host,
                 self.config.port, "resumed" if flags.session_present else "new")
        if self._connect_cb is not None:
            try:
                self._connect_cb(bool(flags.session_present), broker_cap)
            except Exception:
                # A bug in the session bookkeeping must not leave the connection up but never
                # subscribed: log it and serve on (the broker still resends by packet id).
                log.exception("%s connection: handling the new connection failed; serving on", self.name)
        self._subscribe_all(client, bool(flags.session_present))
        self._pump.connack(True)  # from now on a pause takes effect at once, SUBACKs pending or not
        self._settle_connack(True)

    def _settle_connack(self, accepted: bool) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(accepted)

    def _subscribe_all(self, client: mqttclient.Client, session_present: bool) -> None:
        subs = self.subs
        if subs.unsubscribe:
            client.unsubscribe(sorted(subs.unsubscribe))
            subs.unsubscribe.clear()
        if subs.connected(session_present):
            # The resumed session holds them already.  Subscribing again would put SUBACKs
            # behind the unacknowledged window the broker resends first, and reading must be
            # free to stop in the middle of that window.
            self.connected.set()
            return
        for index, sub in enumerate(subs.wanted, start=1):
            rc, mid = mqttclient.subscribe(client, sub, sub.id or index, self.protocol.v5)
            if rc == mqttclient.ERR_SUCCESS and mid is not None:
                subs.sent(mid, sub)
        if not subs.pending:
            self.connected.set()

    def set_subscriptions(self, subscriptions: list[Subscription]) -> None:
        """Replace the subscriptions (a reload) on the same session: unsubscribe dropped
        filters, subscribe every wanted one again (renewing its options and id)."""
        self.subs.replace(subscriptions)
        if self._up_now:
            self._subscribe_all(self._client, True)

    @property
    def subscriptions(self) -> list[Subscription]:
        return self.subs.wanted

    def unsubscribe(self, topics: set[str]) -> None:
        """Unsubscribe ``topics`` now, or at the next connect."""
        self.subs.unsubscribe |= topics
        if self._up_now:
            self._client.unsubscribe(sorted(self.subs.unsubscribe))
            self.subs.unsubscribe.clear()

    def _on_subscribe(self, _c: mqttclient.Client, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        granted = [None if r.is_failure else int(r.value) for r in reasons]
        if self.subs.acknowledged(mid, granted):
            self.connected.set()  # first: the callback below raising must not keep it unset
            if self.subs.held is not None and self._subscribed_cb is not None:
                self._subscribed_cb(self.subs.held)

    def _on_disconnect(self, _c: mqttclient.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        was_up = self._up_now
        self._up_now = False
        self.connected.clear()
        try:
            self._pump.connack(False)
            if self._connack is not None and not self._connack.done():
                self.refusal = self.refusal or f"connection closed before CONNACK ({reason})"
                self._settle_connack(False)
            elif was_up and not self.stopping:
                log.warning("%s connection: disconnected from the broker: %s", self.name, reason)
                if getattr(flags, "is_disconnect_packet_from_server", False) and getattr(reason, "value", 0) == 0x8E:
                    self.taken_over = True  # "Session taken over": another client with our id
                    self._clash.taken_over()
        finally:
            self.down.set()  # whatever raised above (logged by mqttclient), the reconnect must come

    def _on_message(self, client: mqttclient.Client, _u: Any, m: Any) -> None:
        """A QoS 2 message (or one bridge.packets would not decode), as paho delivers it."""
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
        self._deliver_inbound(msg)

    def _deliver_inbound(self, msg: Inbound) -> None:
        try:
            if self._deliver is None:
                raise RuntimeError(f"the {self.name} connection takes no messages")
            self._deliver(msg)
        except Exception:
            log.exception("dispatch failed for a message on %r; acknowledged", msg.topic)
            if msg.qos:
                self._client.ack(msg.mid, msg.qos)

    def _on_publish(self, _c: mqttclient.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        """A QoS 2 reply completed or refused (PUBREC or PUBCOMP with a failure code)."""
        if self._published is not None:
            failed = getattr(reason, "is_failure", False)
            self._published(mid, mqttclient.refusal_text(reason.value) if failed else None)

    # -- the socket on the event loop (bridge.pump) -------------------------------------------
    def _on_socket_open(self, _c: mqttclient.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pump.opened(sock)

    def _on_socket_close(self, _c: mqttclient.Client, _u: Any, sock: Any) -> None:
        self._pump.closed(sock)

    def _on_register_write(self, _c: mqttclient.Client, _u: Any, _sock: Any) -> None:
        self._pump.register_write()

    def _on_unregister_write(self, _c: mqttclient.Client, _u: Any, sock: Any) -> None:
        self._pump.unregister_write(sock)

    def set_reading(self, on: bool) -> None:
        """Read requests, or leave them in TCP and the broker, at once (bridge.pump)."""
        self._pump.set_reading(on)

    def flush(self) -> None:
        self._pump.flush()

    @property
    def last_read(self) -> float:
        return self._pump.last_read

    # -- what the bridge uses -----------------------------------------------------------------
    def publish(self, out: Outbound) -> int | None:
        """Hand a message to paho; return its mid when the broker's ack is to be awaited."""
        rc, mid = mqttclient.publish(self._client, out, self.protocol.v5)
        if out.qos and rc in (mqttclient.ERR_SUCCESS, mqttclient.ERR_NO_CONN):
            return mid  # paho resends it after a reconnect
        if rc != mqttclient.ERR_SUCCESS:
            log.warning("reply to %r not published: %s", out.topic, mqttclient.error_string(rc))
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
        self.stopping = True
        if self._client.socket() is not None:
            self._client.disconnect()
            try:
                async with asyncio.timeout(timeout):
                    await self.down.wait()
            except TimeoutError:
                log.warning("%s connection: the broker did not close it in %g s", self.name, timeout)
        self.down.set()
        self._pump.stop()
