"""Decoding an incoming MQTT PUBLISH straight into an :class:`~bridge.message.Inbound`.

paho decodes every PUBLISH into an ``MQTTMessage`` with a validating v5 ``Properties``
object, then matches its topic against per-topic callbacks: more work per message than the
rest of the bridge's MQTT path.  The transport hands QoS 0 and 1 PUBLISH packets here instead
(QoS 2 stays with paho, which keeps its state).  Wire format: MQTT v5 section 3.3 (3.1.1 has
no properties).  Anything unexpected raises :class:`ValueError`, and paho's own decoder takes
the packet, with its own handling of malformed input.
"""

from __future__ import annotations

from .message import Inbound

# PUBLISH properties (v5 2.2.2.2): id -> kind
_BYTE, _INT2, _INT4, _VARINT, _STR, _BIN, _PAIR = range(7)
_KINDS = {0x01: _BYTE, 0x02: _INT4, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT, 0x23: _INT2, 0x26: _PAIR}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("variable byte integer longer than 4 bytes")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    end = pos + 2 + int.from_bytes(data[pos:pos + 2], "big")
    if end > len(data):
        raise ValueError("field runs past the packet")
    return data[pos + 2:end], end


def _text(raw: bytes) -> str:
    if b"\x00" in raw:  # MQTT forbids NUL in strings (1.5.4); paho refuses the packet
        raise ValueError("NUL in a string")
    return raw.decode()


def decode_publish(header: int, packet: bytes, v5: bool) -> Inbound:
    """The message in a PUBLISH packet (``header`` its first byte, ``packet`` the rest after
    the remaining length).  The topic and properties must be valid UTF-8 (else ValueError)."""
    qos = (header >> 1) & 0x03
    raw_topic, pos = _string(packet, 0)
    mid = 0
    if qos:
        mid = int.from_bytes(packet[pos:pos + 2], "big")
        pos += 2
    msg = Inbound(_text(raw_topic), b"", qos, mid, bool(header & 0x01), bool(header & 0x08))
    if v5:
        length, pos = _varint(packet, pos)
        end = pos + length
        if end > len(packet):
            raise ValueError("properties run past the packet")
        while pos < end:
            ident = packet[pos]
            kind = _KINDS.get(ident)
            pos += 1
            if kind is _STR or kind is _BIN:
                value, pos = _string(packet, pos)
                if ident == 0x08:
                    msg.response_topic = _text(value)
                elif ident == 0x09:  # bytes: a slice of paho's buffer is a bytearray, unhashable
                    msg.correlation_data = bytes(value)
                else:
                    msg.content_type = _text(value)
            elif kind is _PAIR:
                name, pos = _string(packet, pos)
                value, pos = _string(packet, pos)
                msg.user_properties.append((_text(name), _text(value)))
            elif kind is _VARINT:
                sid, pos = _varint(packet, pos)
                msg.subscription_ids.append(sid)
            elif kind is _BYTE:
                pos += 1
            elif kind is _INT2:
                raise ValueError("topic alias: the bridge never allows them")
            elif kind is _INT4:
                pos += 4
            else:
                raise ValueError(f"property 0x{ident:02x} is not a PUBLISH property")
        if pos != end:
            raise ValueError("properties overrun their length")
    elif not raw_topic:
        raise ValueError("an empty topic under MQTT 3.1.1")
    msg.payload = bytes(packet[pos:])
    return msg
