"""paho-mqtt, adapted to the bridge: the only module that imports paho.

The bridge drives paho on its event loop (bridge.transport, bridge.pump) and keeps paho's
protocol logic: sessions, keepalive, QoS 2 state, resends.  What it changes, every change
here with its reason:

* the socket comes connected from bridge.connecting (paho's own connect blocks);
* reads: one ``recv`` fills a buffer the packet reader takes from, where paho does three or
  more per packet;
* writes: every queued packet goes out in one ``send``, where paho does one per packet;
* a PUBLISH is packed in one expression (bridge.message.pack_publish), where paho appends
  to a bytearray byte by byte and formats a debug line it then throws away;
* a QoS 0 reply is queued without paho's per-message objects (a message id, and an info
  object with its own Condition and RLock): nothing waits for it;
* a QoS 0 or 1 PUBLISH is decoded straight into an Inbound (bridge.packets): no
  ``MQTTMessage``, no validating ``Properties``, no per-topic callback matching;
* a PUBACK is reported by packet id and, for a refusal, its reason as text, without the
  reason code and property objects paho builds (paho also raises on a code not valid for a
  PUBACK, such as mosquitto 2.0's 0x95 for a message over its size limit, and drops the
  connection, resending the refused message after each reconnect);
* a PUBREL for a QoS 2 message paho already delivered is reported (with manual acks paho
  ignores it, and unanswered it would stay in flight for ever);
* a callback that raises is logged with its traceback: paho only hands it to a logger the
  bridge does not attach (its per-packet debug lines cost time).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .message import Inbound, Outbound, Subscription, pack_publish, pack_publish_properties
from .packets import decode_publish

RECV_CHUNK = 64 * 1024  # bytes asked of the socket per read: under malloc's mmap threshold
ERR_SUCCESS = paho.MQTT_ERR_SUCCESS
ERR_AGAIN = paho.MQTT_ERR_AGAIN
ERR_NO_CONN = paho.MQTT_ERR_NO_CONN
CLEAN_START_FIRST_ONLY = paho.MQTT_CLEAN_START_FIRST_ONLY
error_string = paho.error_string
_PUBLISH, _PUBACK, _DISCONNECT = 0x30, 0x40, 0xE0
# PUBACK and PUBREC reason codes >= 0x80 (MQTT v5 3.4.2.1), and 0x95 that mosquitto 2.0 sends.
_REFUSALS = {0x80: "Unspecified error", 0x83: "Implementation specific error", 0x87: "Not authorized",
             0x90: "Topic Name invalid", 0x91: "Packet Identifier in use", 0x95: "Packet too large",
             0x97: "Quota exceeded", 0x99: "Payload format invalid"}

log = logging.getLogger("bridge.transport")


def refusal_text(code: int) -> str:
    """A refusing reason code for the log, e.g. ``Not authorized (0x87)``."""
    return f"{_REFUSALS.get(code, 'refused')} (0x{code:02X})"


class PublishProperties(Properties):
    """PUBLISH properties packed directly from an Outbound.

    paho's Properties validates every attribute assignment; building one per reply cost more
    than the rest of the reply path together.  The wire format is MQTT v5 section 2.2.2.
    """

    def __init__(self, out: Outbound) -> None:
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", pack_publish_properties(out))

    def pack(self) -> bytes:
        return self._packed  # type: ignore[no-any-return]


class _Unwatched:
    """The info of a QoS 0 reply, which nothing watches: paho's writer marks it published, and
    a reconnect marks one still queued lost (``rc``); both are no-ops."""

    __slots__ = ()

    def _set_as_published(self) -> None:
        pass

    @property
    def rc(self) -> int:
        return paho.MQTT_ERR_SUCCESS

    @rc.setter
    def rc(self, _value: int) -> None:
        pass


_UNWATCHED = _Unwatched()


class Client(paho.Client):
    """paho's client with the bridge's fast paths (see the module's docstring)."""

    on_stale_pubrel: Callable[[int], None] | None = None
    on_inbound: Callable[[Inbound], None] | None = None  # QoS 0/1 messages, decoded here
    # A QoS 1 publish the broker acknowledged: (mid, None), or refused: (mid, the reason).
    on_acked: Callable[[int, str | None], None] | None = None
    prepared_socket: socket.socket | None = None
    version = 5

    def __init__(self, client_id: str, v5: bool) -> None:
        super().__init__(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
            reconnect_on_failure=False,  # no reconnects of paho's own (its 3.1 downgrade)
        )
        self.suppress_exceptions = True  # a bug in a callback must not kill the network loop (see _easy_log)
        self._v5 = v5
        self._rbuf = b""
        self._rpos = 0
        self._drained = False  # the last recv emptied the socket

    def _create_socket(self) -> Any:
        # paho's own would resolve and connect synchronously, blocking the event loop.
        sock, self.prepared_socket = self.prepared_socket, None
        if sock is None:
            raise OSError("no connected socket to use")
        self._rbuf, self._rpos, self._drained = b"", 0, False
        return sock

    def tls_context(self) -> ssl.SSLContext | None:
        return self._ssl_context if self._ssl else None

    # -- reading ------------------------------------------------------------------------------
    def _sock_recv(self, bufsize: int) -> bytes:
        # paho asks for 1 byte, then the length bytes one by one, then the rest of the packet:
        # served from one recv per socket wake-up.  At most RECV_CHUNK a call: paho would ask
        # for a large payload's whole size at once, and the allocator keeps that memory.
        pos, buf = self._rpos, self._rbuf
        if pos >= len(buf):
            if self._drained:
                # The last recv took less than asked: the socket is empty until the selector
                # says otherwise (level-triggered), so skip a recv that would only fail.
                self._drained = False
                raise BlockingIOError
            buf = super()._sock_recv(RECV_CHUNK)
            if not buf:
                return buf
            # Not under TLS: a record may leave decrypted bytes behind (see pending()).
            self._drained = len(buf) < RECV_CHUNK and not isinstance(self._sock, ssl.SSLSocket)
            self._rbuf, pos = buf, 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end] if pos or end < len(buf) else buf

    def pending(self) -> bool:
        """Bytes read from the socket and not yet taken, or a packet read whole and not yet
        handled: the selector cannot see either."""
        if self._rpos < len(self._rbuf) or (self._in_packet["have_remaining"] and not self._in_packet["to_process"]):
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _easy_log(self, level: Any, fmt: str, *args: Any) -> None:
        # paho's only report of a callback that raised (suppress_exceptions): it runs inside
        # the except block, so the traceback is at hand.
        if level == paho.MQTT_LOG_ERR and fmt.startswith("Caught exception"):
            log.error("%s: " + fmt, self._client_id.decode(errors="replace"), *args, exc_info=True)

    def read_packet(self) -> bool:
        # loop_read() reads one packet when nothing is in flight and does not say whether the
        # socket is drained; the packet reader does.
        rc = self._packet_read()
        if rc == paho.MQTT_ERR_AGAIN:
            # Also when paho stops after 100 reads into one large packet, with the rest of it
            # at hand or even complete: read on then.
            return self.pending()
        if rc != paho.MQTT_ERR_SUCCESS:
            self._loop_rc_handle(rc)
            return False
        return True

    def drop_socket(self) -> None:
        """Close the socket without a DISCONNECT (no session was established on it)."""
        self._sock_close()

    def _handle_publish(self) -> paho.MQTTErrorCode:
        header = self._in_packet["command"]
        if header & 0x06 >= 0x04 or self.on_inbound is None:  # QoS 2: paho keeps its state
            return super()._handle_publish()  # (and "QoS 3", a malformed packet: paho refuses it)
        try:
            msg = decode_publish(header, self._in_packet["packet"], self._v5)
        except (ValueError, IndexError):
            return super()._handle_publish()  # malformed or not UTF-8: paho's rules apply
        self.on_inbound(msg)  # manual acks: nothing else is owed for QoS 0 and 1
        return paho.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Any) -> paho.MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) < 2 or self.on_acked is None:
            return super()._handle_pubackcomp(cmd)  # PUBCOMP, or malformed: paho's own way
        mid = int.from_bytes(packet[:2], "big")
        refusal = refusal_text(packet[2]) if len(packet) > 2 and packet[2] >= 0x80 else None
        message = self._out_messages.pop(mid, None)
        if message is None:
            return paho.MQTT_ERR_SUCCESS
        message.info._set_as_published()  # noqa: SLF001  (answered either way: never resent)
        self._inflight_messages -= 1
        self.on_acked(mid, refusal)
        if self._max_inflight_messages > 0:
            return self._update_inflight()
        return paho.MQTT_ERR_SUCCESS

    def _handle_pubrel(self) -> paho.MQTTErrorCode:
        mid = int.from_bytes(self._in_packet["packet"][:2], "big")
        known = mid in self._in_messages
        rc = super()._handle_pubrel()
        if not known and self.on_stale_pubrel is not None:
            self.on_stale_pubrel(mid)
        return rc

    # -- writing ------------------------------------------------------------------------------
    def _send_publish(self, mid: int, topic: bytes, payload: bytes | bytearray = b"", qos: int = 0,
                      retain: bool = False, dup: bool = False, info: Any = None,
                      properties: Properties | None = None) -> paho.MQTTErrorCode:
        # paho calls this with the topic already encoded, for QoS 1 and 2 and for resends.
        if self._sock is None:
            return paho.MQTT_ERR_NO_CONN
        props = (b"\x00" if properties is None else properties.pack()) if self._v5 else None
        packet = pack_publish(topic, bytes(payload), qos, mid, retain=retain, dup=dup, properties=props)
        return self._packet_queue(_PUBLISH, packet, mid, qos, info)

    def publish_unwatched(self, topic: str, payload: bytes, properties: bytes | None) -> paho.MQTTErrorCode:
        """Queue a QoS 0 PUBLISH (``properties``: the v5 block, None under 3.1.1).  Raises
        ValueError for a topic paho would refuse, and for an empty one."""
        topic_bytes = topic.encode()
        if not topic_bytes:
            raise ValueError("Invalid topic.")
        self._raise_for_invalid_topic(topic_bytes)
        if self._sock is None:
            return paho.MQTT_ERR_NO_CONN
        packet = pack_publish(topic_bytes, payload, 0, 0, properties=properties)
        # Message id 0: no QoS 0 packet has one, and no PUBACK can name it.
        return self._packet_queue(_PUBLISH, packet, 0, 0, _UNWATCHED)

    def _packet_write(self) -> paho.MQTTErrorCode:
        queue = self._out_packet
        if not queue or any(p["command"] & 0xF0 == _DISCONNECT for p in queue):
            return super()._packet_write()  # closing: paho's own bookkeeping for it
        data = b"".join(p["packet"][p["pos"]:] if p["pos"] else p["packet"] for p in queue)
        try:
            sent = self._sock_send(data)
        except (AttributeError, ValueError):
            return paho.MQTT_ERR_SUCCESS
        except BlockingIOError:
            return paho.MQTT_ERR_AGAIN
        except OSError:
            return paho.MQTT_ERR_CONN_LOST
        while sent > 0:
            packet = queue[0]
            if sent < packet["to_process"]:
                packet["pos"] += sent
                packet["to_process"] -= sent
                break
            sent -= packet["to_process"]
            queue.popleft()
            if packet["command"] & 0xF0 == _PUBLISH and packet["qos"] == 0:
                # paho would call on_publish with a fresh reason code and properties per QoS 0
                # message; the bridge waits for no QoS 0 publish.
                packet["info"]._set_as_published()  # noqa: SLF001
        with self._msgtime_mutex:
            self._last_msg_out = paho.time_func()
        return paho.MQTT_ERR_SUCCESS if not queue else paho.MQTT_ERR_AGAIN


def connect_properties(v5: bool, session_expiry: int, receive_maximum: int | None,
                       max_packet_size: int | None) -> Properties | None:
    """The CONNECT properties: session expiry, Receive Maximum, Maximum Packet Size (v5)."""
    if not v5:
        return None
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    if receive_maximum is not None:
        # A compliant broker never sends more unacknowledged QoS >= 1 messages than this.
        props.ReceiveMaximum = min(receive_maximum, 65535)
    if max_packet_size is not None:
        # A compliant broker drops a larger message for this client instead of sending it.
        props.MaximumPacketSize = max_packet_size
    return props


def subscribe(client: Client, sub: Subscription, index: int, v5: bool) -> tuple[Any, int | None]:
    """SUBSCRIBE to ``sub``; under v5 with subscription id ``index`` and retained messages
    only when the subscription is new."""
    if not v5:
        return client.subscribe(sub.topic, qos=sub.qos)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = index  # comes back on each message: names the route
    options = SubscribeOptions(qos=sub.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    return client.subscribe(sub.topic, options=options, properties=props)


def publish(client: Client, out: Outbound, v5: bool) -> tuple[paho.MQTTErrorCode, int | None]:
    """Queue ``out``: paho's return code, and the message id whose PUBACK or PUBCOMP to await
    (None at QoS 0)."""
    if out.qos == 0:
        return client.publish_unwatched(out.topic, out.payload, pack_publish_properties(out) if v5 else None), None
    props = None
    if v5 and (out.correlation_data is not None or out.content_type or out.user_properties):
        props = PublishProperties(out)
    info = client.publish(out.topic, out.payload, out.qos, properties=props)
    return info.rc, info.mid
