"""Shared subscriptions: several real bridge processes in one share group on one mosquitto,
at QoS 1.  Each request is answered once, by one member; a member killed with SIGKILL answers
what its session held when it comes back; a member stopped with SIGTERM leaves the group and
the others take over, losing nothing."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

import pytest

from tests.support.bridgeproc import BridgeProcess, render_toml
from tests.support.clients import pub
from tests.support.load import Collector, Publisher, bulk_publish
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

GROUP = "workers"


def _members(make_bridge, topic: str, names: tuple[str, ...], *, routes: list[dict] | None = None,
             share_group: str | None = GROUP, **sections) -> dict[str, BridgeProcess]:
    """Bridges named ``names`` (each its own client id and state files) in one share group."""
    mqtt = {**({"share_group": share_group} if share_group else {}), **sections.pop("mqtt", {})}
    routes = routes or [{"topic": topic, "handler": "served_by", "reply_topic": "replies/{topic}"}]
    return {n: make_bridge(routes, name=n, env={"BRIDGE_NAME": n}, mqtt=mqtt, **sections) for n in names}


def _answers(collector: Collector) -> list[dict]:
    return [json.loads(p)["body"] for p in collector.snapshot() if json.loads(p).get("status_code") != 0]


def _settle(port: int, reply_topic: str, collector: Collector) -> None:
    """Once no bridge publishes any more: a marker published now reaches the collector after
    every reply the broker already took, so the collector then has them all."""
    marker = json.dumps({"status_code": 0, "body": f"marker-{time.monotonic_ns()}"}).encode()
    pub(port, reply_topic, marker)
    wait_for(lambda: marker in collector.snapshot(), 10, "the marker")


def test_2000_requests_over_3_bridges_are_each_answered_exactly_once(make_bridge, broker, topic_prefix, tmp_path):
    t, count = topic_prefix, 2000
    bridges = _members(make_bridge, f"{t}/req", ("a", "b", "c"))
    replies = Collector(broker.port, f"replies/{t}/req", f"sh-{tmp_path.name}"[:23])
    try:
        bulk_publish(broker.port, f"{t}/req", [f"r-{i:04d}".encode() for i in range(count)])
        wait_for(lambda: len({a["body"] for a in _answers(replies)}) >= count, 60, f"{count} requests answered")
        for bridge in bridges.values():
            assert bridge.stop() == 0  # nothing can be published after this
        _settle(broker.port, f"replies/{t}/req", replies)
    finally:
        replies.close()
    answers = _answers(replies)
    bodies = Counter(a["body"] for a in answers)
    assert set(bodies) == {f"r-{i:04d}" for i in range(count)}
    assert [b for b, n in bodies.items() if n > 1] == []  # exactly once
    served = Counter(a["by"] for a in answers)
    assert set(served) == {"a", "b", "c"} and all(n > 0 for n in served.values()), served


def _stream(publisher: Publisher, topic: str | list[str], count: int, rate: float) -> threading.Thread:
    """``count`` requests at ``rate`` per second, to ``topic`` (or to each of a list in turn)."""
    topics = [topic] if isinstance(topic, str) else topic

    def run() -> None:
        for i in range(count):
            publisher.publish(topics[i % len(topics)], f"s-{i:04d}", 1, [("query", "sleep=0.005")])
            time.sleep(1 / rate)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_member_killed_mid_stream_answers_what_it_held_when_it_restarts(make_bridge, broker, topic_prefix,
                                                                          tmp_path):
    t, count = topic_prefix, 600
    bridges = _members(make_bridge, f"{t}/req", ("a", "b", "c"))
    replies = Collector(broker.port, f"replies/{t}/req", f"sk-{tmp_path.name}"[:23])
    publisher = Publisher(broker.port, f"sp-{tmp_path.name}"[:23])
    try:
        sender = _stream(publisher, f"{t}/req", count, rate=200)
        wait_for(lambda: len(_answers(replies)) >= 150, 20, "150 replies before the kill")
        bridges["b"].kill()
        killed_at = len(_answers(replies))
        # The others keep serving while b is down.
        wait_for(lambda: sum(a["by"] != "b" for a in _answers(replies)[killed_at:]) >= 150, 20,
                 "150 replies from the others after the kill")
        sender.join(30)
        wait_for(lambda: publisher.unacknowledged() == 0, 20, "the broker took every request")
        before_restart = _answers(replies)
        bridges["b"].start()
        wait_for(lambda: len({a["body"] for a in _answers(replies)}) >= count, 30, "every request answered")
        for bridge in bridges.values():
            assert bridge.stop() == 0
        _settle(broker.port, f"replies/{t}/req", replies)
    finally:
        publisher.close()
        replies.close()
    answers = _answers(replies)
    bodies = Counter(a["body"] for a in answers)
    assert set(bodies) == {f"s-{i:04d}" for i in range(count)}  # none lost
    # b's session held its share of what came while it was down: b answered it after its restart.
    answered_before = {a["body"] for a in before_restart}
    held = {a["body"] for a in answers[len(before_restart):] if a["by"] == "b"} - answered_before
    assert len(held) >= 30, len(held)
    # Only what b was running when killed can have been answered twice (and only by b).
    twice = [b for b, n in bodies.items() if n > 1]
    assert len(twice) <= 8 + 2, twice


def test_a_member_stopped_with_sigterm_leaves_the_group_and_nothing_is_lost(make_bridge, broker, topic_prefix,
                                                                           tmp_path):
    """Two routes, so each member has two request sessions in the group: b leaves with both."""
    t, count = topic_prefix, 450
    topics = [f"{t}/req/one", f"{t}/req/two"]
    routes = [{"topic": topic, "handler": "served_by", "reply_topic": "replies/{topic}"} for topic in topics]
    bridges = _members(make_bridge, f"{t}/req", ("a", "b", "c"), routes=routes)
    replies = Collector(broker.port, f"replies/{t}/req/+", f"st-{tmp_path.name}"[:23])
    publisher = Publisher(broker.port, f"tp-{tmp_path.name}"[:23])
    try:
        sender = _stream(publisher, topics, count, rate=150)
        wait_for(lambda: len(_answers(replies)) >= 100, 20, "100 replies before SIGTERM")
        bridges["b"].signal(signal.SIGTERM)
        assert bridges["b"].wait(30) == 0
        sender.join(30)
        # b does not come back: a and c answer everything, b's share included.
        wait_for(lambda: len({a["body"] for a in _answers(replies)}) >= count, 30, "every request answered")
        for name in ("a", "c"):
            assert bridges[name].stop() == 0
        _settle(broker.port, f"replies/{t}/req/one", replies)
    finally:
        publisher.close()
        replies.close()
    bodies = Counter(a["body"] for a in _answers(replies))
    assert set(bodies) == {f"s-{i:04d}" for i in range(count)}
    assert [b for b, n in bodies.items() if n > 1] == []
    log = bridges["b"].log()
    assert log.count("leaving the share group(s)") == 2 and "left the share group(s):" in log


@pytest.mark.parametrize("protocol", [5, 4])
def test_a_route_topic_with_an_explicit_share_prefix_is_served(make_bridge, broker, topic_prefix, tmp_path,
                                                              protocol):
    t, count = topic_prefix, 40
    route = {"topic": f"$share/{GROUP}/{t}/req/+", "handler": "served_by", "reply_topic": "replies/{topic}"}
    bridges = _members(make_bridge, "", ("a", "b"), routes=[route], share_group=None,
                       mqtt={"protocol": protocol})
    replies = Collector(broker.port, f"replies/{t}/req/+", f"ex-{tmp_path.name}"[:23])
    try:
        for i in range(count):
            pub(broker.port, f"{t}/req/{i % 3}", f"e-{i:02d}", version=5 if protocol == 5 else 311)
        wait_for(lambda: len(_answers(replies)) >= count, 20, f"{count} replies")
        for bridge in bridges.values():
            assert bridge.stop() == 0
        _settle(broker.port, f"replies/{t}/req/x", replies)
    finally:
        replies.close()
    answers = _answers(replies)
    assert sorted(a["body"] for a in answers) == [f"e-{i:02d}" for i in range(count)]
    assert {a["by"] for a in answers} == {"a", "b"}
    assert "no route" not in bridges["a"].log() + bridges["b"].log()


def test_a_reload_keeps_the_routes_in_the_share_group(make_bridge, broker, topic_prefix, tmp_path):
    t, count = topic_prefix, 40
    bridges = _members(make_bridge, f"{t}/req", ("a", "b"))
    a = bridges["a"]
    extra = {"topic": f"{t}/extra", "handler": "served_by", "reply_topic": "replies/{topic}"}
    a.config_path.write_text(render_toml(dict(a.config, routes=[extra, *a.config["routes"]])))
    a.signal(signal.SIGHUP)  # a new first route: every subscription id moves
    a.wait_for_log("reloaded")
    replies = Collector(broker.port, f"replies/{t}/+", f"rl-{tmp_path.name}"[:23])
    try:
        for i in range(count):
            pub(broker.port, f"{t}/req", f"q-{i:02d}")
        pub(broker.port, f"{t}/extra", "extra")
        wait_for(lambda: len(_answers(replies)) >= count + 1, 20, "every reply")
        for bridge in bridges.values():
            assert bridge.stop() == 0
        _settle(broker.port, f"replies/{t}/x", replies)
    finally:
        replies.close()
    bodies = Counter(x["body"] for x in _answers(replies))
    assert bodies == Counter([f"q-{i:02d}" for i in range(count)] + ["extra"])  # each once
    assert {x["by"] for x in _answers(replies)} == {"a", "b"}
