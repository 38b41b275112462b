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
    assert wait_health(bridge.http_url, 503).json()["status"] == "starting"  # loading, then connecting
    connecting = wait_for(lambda: "connections to" in (r := get(bridge.http_url + "/__/health").json())["reason"] and r,
                          15, "the reason to name the connections")
    assert connecting == {"status": "starting",
                          "reason": f"requests and replies connections to 127.0.0.1:{broker.port} down"}
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


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_health_answers_while_a_function_blocks_its_own_loop_as_the_watchdog_pings(
        make_bridge, broker, topic_prefix, listener, mode):
    """A function blocking its loop never blocks the one serving MQTT, HTTP and the watchdog:
    health answers 200 all along, exactly as systemd keeps hearing WATCHDOG=1."""
    topic = f"{topic_prefix}/wedge"
    bridge = make_bridge([{"topic": topic, "handler": "wedge"}], workers={"mode": mode},
                         env={"NOTIFY_SOCKET": listener.sock.getsockname(), "WATCHDOG_USEC": "200000"})
    listener.explain = bridge.log
    listener.wait_field("WATCHDOG", count=2)
    window: dict[str, dict] = {}
    blocker = threading.Thread(target=lambda: window.setdefault("w", rr(broker.port, topic, "1.5")["body"]))
    blocker.start()
    answers: list[tuple[float, int]] = []
    while blocker.is_alive():
        asked = time.monotonic()
        answers.append((asked, get(bridge.http_url + "/__/health", timeout=0.3).status_code))
        time.sleep(0.05)  # a probe every 50 ms, as a health checker would poll
    start, end = window["w"]["start"], window["w"]["end"]
    during = [status for at, status in answers if start <= at <= end - 0.3]
    assert len(during) >= 10 and set(during) == {200}, answers
    pings = [d.at for d in listener.with_field("WATCHDOG") if start <= d.at <= end]
    assert max(b - a for a, b in zip([start, *pings], [*pings, end])) < 0.2
