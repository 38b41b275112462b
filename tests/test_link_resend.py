"""The reply connection coming back after a drop, with a real mosquitto behind a proxy that
cuts the connection: what was in flight is resent and what was parked goes out, within the
broker's Receive Maximum."""

from __future__ import annotations

import asyncio
import signal

from bridge.config import MqttConfig
from bridge.link import BrokerLink
from bridge.message import Outbound
from tests.support.broker import Broker
from tests.support.proxy import Proxy


def test_parked_replies_go_out_after_the_resent_ones_within_the_receive_maximum(tmp_path):
    """Two QoS 1 replies in flight when the connection drops, two more parked meanwhile
    (bridge.delivery parks what finishes while the reply connection is down), and a broker
    that takes at most two unacknowledged messages.  All four are delivered, and never more
    than two are outstanding: MQTT 5 brokers may disconnect a client past it (0x93).  The
    parked ones were once sent on top of the two paho resends at the reconnect."""
    broker = Broker(tmp_path / "broker", extra="max_inflight_messages 2\n").start()
    proxy = Proxy(broker.port)
    acked: list[int] = []
    outstanding: list[int] = []
    parked: list[Outbound] = []

    async def scenario() -> None:
        config = MqttConfig(port=proxy.port, client_id="resend-test", reconnect_min_delay=0.1, reconnect_max_delay=0.3)

        def publish_parked() -> None:
            for out in parked:
                link.publish(out)
            parked.clear()
            link.flush()

        link = BrokerLink(config, [], on_message=lambda _m, _i: None, on_published=lambda mid, _why: acked.append(mid),
                          on_connected=publish_parked)
        client = link.replies._client
        handle_connack = client._handle_connack

        def watched() -> object:
            rc = handle_connack()
            outstanding.append(client._inflight_messages)
            return rc

        client._handle_connack = watched
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.replies.connected.wait(), 5)
            assert client._max_inflight_messages == 2  # the broker's Receive Maximum
            broker.proc.send_signal(signal.SIGSTOP)  # no PUBACK comes back
            for i in range(2):
                link.publish(Outbound("replies/x", b"in flight %d" % i, 1))
            link.flush()
            proxy.cut()
            broker.proc.send_signal(signal.SIGCONT)
            parked.extend(Outbound("replies/x", b"parked %d" % i, 1) for i in range(2))
            for _ in range(100):
                if len(set(acked)) == 4:
                    break
                await asyncio.sleep(0.05)
        finally:
            await link.close()
            task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()
        broker.stop()
    assert len(set(acked)) == 4, acked
    assert outstanding and max(outstanding) <= 2, outstanding
