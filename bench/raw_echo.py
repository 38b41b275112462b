"""Minimal paho-mqtt echo server: the baseline the bridge is compared with.

    python bench/raw_echo.py HOST PORT TOPIC [--through-process]

Each request on TOPIC is published back, unchanged, to its MQTT v5 Response Topic with its
Correlation Data, at the QoS it arrived with.  Nothing else: no handler, no validation, and no
paho ``Properties`` object built per reply (building one costs ~45 us, more than the rest of
the echo): the one property, Correlation Data, is packed as its wire bytes (MQTT v5 2.2.2).

``--through-process``: each payload first goes to a child process and back over a Unix socket
pair (a 4-byte length and the bytes, one ``send`` and one ``recv`` each way when it fits),
waiting for it.  That is the least any server pays per request for running its functions in
another process: the floor under the bridge's default mode with one request in flight.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class _Packed(Properties):
    """A PUBLISH property block given as bytes (paho only calls ``pack()`` on it)."""

    def __init__(self, data: bytes) -> None:
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_data", data)

    def pack(self) -> bytes:
        return self._data  # type: ignore[no-any-return]


NO_PROPERTIES = _Packed(b"\x00")


def _child(sock: socket.socket) -> None:
    """Send every payload back as it came, until the parent closes its end."""
    buf = bytearray()
    while True:
        data = sock.recv(1 << 16)
        if not data:
            os._exit(0)
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            end = 4 + int.from_bytes(buf[:4], "big")
            sock.sendall(bytes(buf[:end]))
            del buf[:end]


def _through(sock: socket.socket, payload: bytes) -> bytes:
    """``payload`` after a round trip through the child."""
    sock.sendall(len(payload).to_bytes(4, "big") + payload)
    data = sock.recv(1 << 16)
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        more = sock.recv(1 << 16)
        if not more:
            raise SystemExit("the child process is gone")
        data += more
    return data[4:]


def main() -> None:
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    hop = None
    if "--through-process" in sys.argv[4:]:
        hop, theirs = socket.socketpair()
        if os.fork() == 0:
            hop.close()
            _child(theirs)
        theirs.close()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-raw-echo-{socket.gethostname()}-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )

    def on_socket_open(client, userdata, sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(topic, qos=2)

    def on_message(client, userdata, msg):
        req = msg.properties
        response_topic = getattr(req, "ResponseTopic", None)
        if not response_topic:
            return
        corr = getattr(req, "CorrelationData", None)
        props = NO_PROPERTIES
        if corr is not None and len(corr) < 125:  # the block's length fits one varint byte
            props = _Packed(bytes((3 + len(corr),)) + b"\x09" + len(corr).to_bytes(2, "big") + corr)
        payload = msg.payload if hop is None else _through(hop, msg.payload)
        client.publish(response_topic, payload, qos=msg.qos, properties=props)

    client.on_socket_open = on_socket_open
    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect(host, port, keepalive=60)
    client.loop_forever()


if __name__ == "__main__":
    main()
