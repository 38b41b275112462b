"""The bridge's own message types, free of any MQTT library.

The transport converts each incoming paho message into an :class:`Inbound` exactly once, and
publishes :class:`Outbound` values; everything between works on these.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Inbound:
    """A message received from the broker (MQTT v5 properties flattened; empty under 3.1.1)."""

    topic: str
    payload: bytes
    qos: int = 0
    mid: int = 0
    retain: bool = False
    dup: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    content_type: str | None = None
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    subscription_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Outbound:
    """A message to publish."""

    topic: str
    payload: bytes
    qos: int = 0
    correlation_data: bytes | None = None
    content_type: str | None = None
    user_properties: list[tuple[str, str]] = field(default_factory=list)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"a property of {len(value)} bytes exceeds MQTT's limit of 65,535")
    return len(value).to_bytes(2, "big") + value


def pack_publish_properties(out: Outbound) -> bytes:
    """The MQTT v5 PUBLISH property block (spec 2.2.2) for ``out``: content type, correlation
    data and user properties, in the order paho packs them."""
    buf = bytearray()
    if out.content_type:
        buf += b"\x03" + _field(out.content_type.encode())
    if out.correlation_data is not None:
        buf += b"\x09" + _field(out.correlation_data)
    for name, value in out.user_properties:
        buf += b"\x26" + _field(name.encode()) + _field(value.encode())
    return _varint(len(buf)) + bytes(buf)


MAX_REMAINING_LENGTH = 268_435_455  # the largest a 4-byte variable byte integer can say


def pack_publish(topic: bytes, payload: bytes, qos: int, mid: int, *, retain: bool = False, dup: bool = False,
                 properties: bytes | None = None) -> bytes:
    """A whole PUBLISH packet (spec 3.3); ``properties`` is the v5 property block, None under
    3.1.1.  Raises ValueError when it would exceed MQTT's largest packet."""
    head = len(topic).to_bytes(2, "big") + topic
    if qos:
        head += mid.to_bytes(2, "big")
    if properties is not None:
        head += properties
    size = len(head) + len(payload)
    if size > MAX_REMAINING_LENGTH:
        raise ValueError("Packet too large")
    return bytes((0x30 | dup << 3 | qos << 1 | retain,)) + _varint(size) + head + payload


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter the bridge subscribes to, and its QoS.

    ``id`` is the MQTT 5 subscription identifier the broker puts on each message it delivers
    for this filter: the route's position + 1 (0: the filter's position in its session).
    """

    topic: str
    qos: int
    id: int = 0
