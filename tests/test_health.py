"""``/__/health`` over real HTTP: it follows the broker, start-up and shutdown, and agrees with
what the bridge tells systemd (READY=1, STOPPING=1, the watchdog)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.support.broker import Broker
from tests.support.clients import rr
from tests.support.waiting import wait_for
from tests.support.web import get, samples, value, wait_health
from tests.test_systemd import NotifyListener


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def test_health_is_503_until_ready_and_while_the_broker_is_away(make_bridge, tmp_path, topic_prefix, listener):
    broker = Broker(tmp_path / "own-broker")  # not started yet
    bridge = make_bridge([{"topic": f"{topic_prefix}/x", "handler": "inspect_event"}], on=broker, start=False,
                         env={"NOTIFY_SOCKET": listener.sock.getsockname()})
    listener.explain = bridge.log
    bridge.start(wait_ready=False)
    starting = wait_health(bridge.http_url, 503)
    assert starting.json()["status"] == "starting"
    assert "requests and replies connections" in starting.json()["reason"]
    assert listener.with_field("READY") == []  # systemd is not told "ready" either
    try:
        broker.start()
        ready = listener.wait_field("READY")[0]
        healthy = wait_health(bridge.http_url, 200, timeout=5)
        assert healthy.text == "OK"
        assert time.monotonic() - ready.at < 5

        broker.stop()
        away = wait_health(bridge.http_url, 503)
        assert away.json()["status"] == "broker away"
        assert away.headers["Content-Type"].startswith("application/json")
        assert value(samples(bridge.http_url), "iot_bridge_connected", connection="requests") == 0

        broker.start()
        assert wait_health(bridge.http_url, 200).text == "OK"
        assert value(samples(bridge.http_url), "iot_bridge_reconnects_total", connection="requests") == 1
    finally:
        bridge.stop()
        broker.stop()


def test_health_says_shutting_down_while_in_flight_work_finishes(make_bridge, broker, topic_prefix, listener):
    topic = f"{topic_prefix}/slow"
    bridge = make_bridge([{"topic": topic, "handler": "slow"}],
                         env={"NOTIFY_SOCKET": listener.sock.getsockname()})
    assert get(bridge.http_url + "/__/health").status_code == 200
    reply: dict[str, dict] = {}
    waiter = threading.Thread(target=lambda: reply.setdefault("r", rr(broker.port, topic, "1.5")))
    waiter.start()
    wait_for(lambda: value(samples(bridge.http_url), "iot_bridge_in_flight") == 1, 5, "the request in flight")
    bridge.signal(signal.SIGTERM)
    listener.wait_field("STOPPING")
    stopping = wait_health(bridge.http_url, 503, timeout=5)
    assert stopping.json()["status"] == "shutting down"
    refused = requests.post(bridge.http_url + "/invoke/slow", data="0", timeout=5)
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
    waiter.join(10)
    assert reply["r"]["body"] == "slept 1.5"
    assert bridge.wait() == 0


def test_health_goes_unanswered_exactly_while_the_watchdog_is_silent(make_bridge, broker, topic_prefix, listener):
    topic = f"{topic_prefix}/wedge"
    bridge = make_bridge([{"topic": topic, "handler": "wedge"}],
                         env={"NOTIFY_SOCKET": listener.sock.getsockname(), "WATCHDOG_USEC": "200000"})
    listener.explain = bridge.log
    listener.wait_field("WATCHDOG", count=2)
    window: dict[str, dict] = {}
    blocker = threading.Thread(target=lambda: window.setdefault("w", rr(broker.port, topic, "1.5")["body"]))
    blocker.start()

    def unanswered() -> float | None:
        asked = time.monotonic()
        try:
            get(bridge.http_url + "/__/health", timeout=0.3)
        except requests.Timeout:
            return asked
        return None

    asked = wait_for(unanswered, 5, "a health check left unanswered")
    blocker.join(10)
    start, end = window["w"]["start"], window["w"]["end"]
    assert start - 0.05 <= asked <= end  # unanswered while the loop was blocked ...
    assert [d for d in listener.with_field("WATCHDOG") if start + 0.05 < d.at < end] == []  # ... as systemd saw
    assert get(bridge.http_url + "/__/health").text == "OK"  # and both are back together
