"""Minimal paho-mqtt echo server: the baseline the bridge is compared with.

    python bench/raw_echo.py HOST PORT TOPIC

Each request on TOPIC is published back, unchanged, to its MQTT v5 Response Topic with its
Correlation Data, at the QoS it arrived with.  Nothing else: no handler, no validation.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
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
        props = Properties(PacketTypes.PUBLISH)
        corr = getattr(req, "CorrelationData", None)
        if corr is not None:
            props.CorrelationData = corr
        client.publish(response_topic, msg.payload, qos=msg.qos, properties=props)

    client.on_socket_open = on_socket_open
    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect(host, port, keepalive=60)
    client.loop_forever()


if __name__ == "__main__":
    main()
