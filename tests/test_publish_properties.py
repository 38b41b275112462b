"""The transport packs replies itself: byte for byte what paho packs."""

import socket

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.message import Outbound
from bridge.mqttclient import Client
from bridge.mqttclient import PublishProperties as _PublishProperties

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)


@given(content_type=st.one_of(st.none(), text.filter(bool)), correlation=st.one_of(st.none(), st.binary(max_size=300)),
       user=st.lists(st.tuples(text, text), max_size=40))
def test_packed_properties_match_paho(content_type, correlation, user):
    out = Outbound("t", b"", 1, correlation, content_type, user)
    reference = Properties(PacketTypes.PUBLISH)
    if content_type:
        reference.ContentType = content_type
    if correlation is not None:
        reference.CorrelationData = correlation
    if user:
        reference.UserProperty = user
    packed = _PublishProperties(out).pack()
    assert packed == reference.pack()
    decoded = Properties(PacketTypes.PUBLISH)
    decoded.unpack(packed)
    assert getattr(decoded, "UserProperty", []) == user


def _queued(client: paho.Client, send_publish, *args) -> bytes:
    """The packet ``send_publish`` queues on ``client`` (a socket pair stands in for the broker)."""
    ours, theirs = socket.socketpair()
    client.on_socket_register_write = lambda *_: None  # queued for an event loop, not written
    client._sock = ours  # noqa: SLF001
    client._out_packet.clear()  # noqa: SLF001
    try:
        assert send_publish(client, *args) == paho.MQTT_ERR_SUCCESS
        return bytes(client._out_packet[-1]["packet"])  # noqa: SLF001
    finally:
        client._sock = None  # noqa: SLF001
        ours.close()
        theirs.close()


@pytest.mark.parametrize("v5", [True, False])
@given(topic=st.binary(min_size=1, max_size=300), payload=st.one_of(st.binary(max_size=300), st.just(b"x" * 20_000)),
       qos=st.integers(0, 2), mid=st.integers(1, 65535), retain=st.booleans(), dup=st.booleans(),
       correlation=st.one_of(st.none(), st.binary(max_size=200)))
def test_publish_packets_match_pahos_byte_for_byte(v5, topic, payload, qos, mid, retain, dup, correlation):
    props = _PublishProperties(Outbound("t", b"", qos, correlation)) if v5 and correlation is not None else None
    args = (mid, topic, payload, qos, retain, dup, None, props)
    reference = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    assert _queued(Client("c", v5), Client._send_publish, *args) == _queued(reference, paho.Client._send_publish, *args)


@pytest.mark.parametrize("v5", [True, False])
@given(topic=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="+#\x00"),
                     min_size=1, max_size=100),
       payload=st.binary(max_size=300), correlation=st.one_of(st.none(), st.binary(max_size=200)))
def test_qos0_replies_match_pahos_publish_byte_for_byte(v5, topic, payload, correlation):
    out = Outbound(topic, payload, 0, correlation)
    props = _PublishProperties(out) if v5 and correlation is not None else None
    reference = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    ours = _queued(Client("c", v5), lambda c: Client.publish_unwatched(c, topic, payload, props.pack() if props else (b"\x00" if v5 else None)))
    assert ours == _queued(reference, lambda c: paho.Client.publish(c, topic, payload, 0, properties=props).rc)


@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "", "x" * 65536])
def test_a_qos0_reply_to_a_topic_paho_would_refuse_raises(topic):
    with pytest.raises(ValueError):
        _queued(Client("c", True), lambda c: Client.publish_unwatched(c, topic, b"p", b"\x00"))
