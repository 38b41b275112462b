"""Leaving a share group, the parts that need no broker (bridge.sessions); the real thing, with
three bridge processes on mosquitto, is in tests/test_shared.py."""

from __future__ import annotations

import asyncio

from bridge.config import MqttConfig
from bridge.link import BrokerLink
from bridge.message import Inbound, Subscription


def _link(subscriptions: list[Subscription], delivered: list[Inbound], client_id: str = "gw-1") -> BrokerLink:
    return BrokerLink(MqttConfig(client_id=client_id), subscriptions, on_message=lambda m, _i: delivered.append(m),
                      on_published=lambda _mid, _why: None)


def test_leave_markers_are_never_requests():
    delivered: list[Inbound] = []
    session = _link([Subscription("$share/g/#", 1)], delivered).sessions[0]
    assert session.leave_topic == "iot-bridge/leave/gw-1"
    for topic in ("iot-bridge/leave/gw-1", "iot-bridge/leave/gw-2"):  # its own, another member's
        session._on_request(Inbound(topic, b"marker"))
    session._on_request(Inbound("iot-bridge/other", b"request"))
    assert [m.topic for m in delivered] == ["iot-bridge/other"]


def test_a_client_id_with_wildcards_gets_a_valid_leave_topic():
    assert _link([], [], client_id="gw+1#").sessions[0].leave_topic == "iot-bridge/leave/gw_1_"


def test_there_is_nothing_to_leave_without_shared_subscriptions_or_a_connection():
    async def scenario() -> tuple[bool, bool]:
        plain = _link([Subscription("a/+", 1)], [])
        shared = _link([Subscription("$share/g/a/+", 1)], [])  # never connected
        return await plain.leave(1), await shared.leave(1)

    assert asyncio.run(scenario()) == (False, False)
