"""The bridge's own PUBLISH decoder gives exactly what paho's decoder gives (bridge.packets)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.client import MQTTv5, MQTTv311
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.packets import decode_publish

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


def _packet_bytes(topic: str, mid: int, qos: int, props: Properties | None, payload: bytes) -> bytes:
    raw = topic.encode()
    out = struct.pack("!H", len(raw)) + raw
    if qos:
        out += struct.pack("!H", mid)
    if props is not None:
        out += props.pack()
    return out + payload


@st.composite
def publishes(draw):
    props = Properties(PacketTypes.PUBLISH)
    if draw(st.booleans()):
        props.ResponseTopic = draw(text)
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        props.ContentType = draw(text)
    if draw(st.booleans()):
        props.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    users = draw(st.lists(st.tuples(text, text), max_size=4))
    if users:
        props.UserProperty = users
    sids = draw(st.lists(st.integers(1, 268435455), max_size=3))
    if sids:
        props.SubscriptionIdentifier = sids
    qos = draw(st.integers(0, 1))
    header = 0x30 | (qos << 1) | draw(st.sampled_from([0, 1, 8, 9]))
    topic = draw(text.filter(bool))
    return header, _packet_bytes(topic, draw(st.integers(1, 65535)), qos, props, draw(st.binary(max_size=200)))


@settings(max_examples=400, deadline=None)
@given(publishes())
def test_v5_publish_decodes_as_paho_decodes_it(case):
    header, packet = case
    ours = decode_publish(header, bytearray(packet), v5=True)  # paho reads packets into a bytearray
    theirs = _packet.decode_publish(header, packet, MQTTv5)
    props = theirs.properties
    assert (ours.topic, ours.payload, ours.qos, ours.mid, ours.retain, ours.dup) == (
        theirs.topic.decode(), theirs.payload, theirs.qos, theirs.mid, theirs.retain, theirs.dup)
    assert ours.response_topic == getattr(props, "ResponseTopic", None)
    assert ours.correlation_data == getattr(props, "CorrelationData", None)
    # The types too: a request's copy key (bridge.delivery) is hashed, and holds these.
    assert type(ours.payload) is bytes and type(ours.topic) is str
    assert ours.correlation_data is None or type(ours.correlation_data) is bytes
    assert ours.response_topic is None or type(ours.response_topic) is str
    assert ours.content_type == getattr(props, "ContentType", None)
    assert ours.user_properties == (getattr(props, "UserProperty", None) or [])
    assert ours.subscription_ids == (getattr(props, "SubscriptionIdentifier", None) or [])


@given(topic=text.filter(bool), payload=st.binary(max_size=100), qos=st.integers(0, 1))
def test_v311_publish_decodes_as_paho_decodes_it(topic, payload, qos):
    packet = _packet_bytes(topic, 7, qos, None, payload)
    ours = decode_publish(0x30 | qos << 1, packet, v5=False)
    theirs = _packet.decode_publish(0x30 | qos << 1, packet, MQTTv311)
    assert (ours.topic, ours.payload, ours.mid) == (theirs.topic.decode(), theirs.payload, theirs.mid)


@pytest.mark.parametrize("packet", [
    b"\x00\x05ab",  # topic runs past the packet
    b"\x00\x01a\x05\x08\x00\x10ab",  # a property runs past the packet
    b"\x00\x01a\x02\x23\x00",  # a topic alias (never allowed)
    b"\x00\x01a\x01\x24",  # not a PUBLISH property
    b"\x00\x01a\xff\xff\xff\xff\x7f",  # a varint of 5 bytes
    b"\x00\x01\xff\x00",  # a topic that is not UTF-8
    b"\x00\x02a\x00\x00",  # NUL in a topic
])
def test_malformed_packets_raise_value_error_for_pahos_own_decoder_to_judge(packet):
    with pytest.raises((ValueError, IndexError)):
        decode_publish(0x30, packet, v5=True)


class _Arrived:
    """The receiving end of a connection on which ``data`` has arrived whole: ``recv`` hands
    out what is asked, then raises BlockingIOError as a drained non-blocking socket does."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def recv(self, size: int) -> bytes:
        if self.pos >= len(self.data):
            raise BlockingIOError
        out = self.data[self.pos:self.pos + size]
        self.pos += len(out)
        return out

    def close(self) -> None:
        pass


@pytest.mark.parametrize("followed", [False, True])  # by a small request, arrived with it
def test_a_large_packet_is_delivered_in_the_wake_up_that_brought_it(followed):
    """paho stops after 100 reads into one packet, and says "again" also when that last read
    completed it.  The selector then sees nothing more to read: the request (and one that
    came behind it) once waited for the next packet from the broker, up to a keepalive."""
    from bridge import mqttclient
    from bridge.message import pack_publish
    from bridge.pump import Pump

    topic = b"req/big"
    remaining = 100 * mqttclient.RECV_CHUNK - 1 - 4  # 1 + 4 header bytes share the first read
    size = remaining - (2 + len(topic) + 2 + 1)
    data = pack_publish(topic, b"x" * size, 1, 7, properties=b"\x00")
    if followed:
        data += pack_publish(b"req/small", b"y", 1, 8, properties=b"\x00")
    delivered: list[object] = []
    client = mqttclient.Client("reader", True)
    client.on_inbound = delivered.append
    client._sock = _Arrived(data)
    pump = Pump(client)
    pump._reader_on = True
    pump._read_burst()
    assert [len(m.payload) for m in delivered] == [size] + ([1] if followed else [])  # type: ignore[attr-defined]


def test_a_publish_with_both_qos_bits_set_is_a_protocol_error_not_a_request():
    """MQTT 5 3.3.1.2: such a PUBLISH is malformed; the connection is dropped, as paho does."""
    from paho.mqtt.client import MQTT_ERR_PROTOCOL

    from bridge import mqttclient

    delivered: list[object] = []
    client = mqttclient.Client("reader", True)
    client.on_inbound = delivered.append
    client._in_packet["command"] = 0x36
    client._in_packet["packet"] = bytearray(_packet_bytes("req/x", 7, 1, Properties(PacketTypes.PUBLISH), b"hi"))
    assert client._handle_publish() == MQTT_ERR_PROTOCOL
    assert delivered == []
