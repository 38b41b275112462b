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
