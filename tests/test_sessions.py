"""How routes are spread over request sessions (bridge.sessions): without a broker, and with
mosquitto when a restart moves a route to a session of its own.  tests/test_limits.py shows
why there is a session per route: a flood on one route does not hold up another."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

from bridge.config import MqttConfig
from bridge.link import BrokerLink
from bridge.message import Subscription
from bridge.promises import SessionSubscriptions
from bridge.sessions import session_client_id, session_count, share, spread
from tests.support.clients import rr
from tests.support.load import Collector, Publisher
from tests.support.waiting import wait_for


def _subs(n: int) -> list[Subscription]:
    return [Subscription(f"t/{i}", 1, i + 1) for i in range(n)]


def test_one_route_keeps_the_one_session_it_always_had():
    link = BrokerLink(MqttConfig(client_id="gw"), _subs(1), on_message=lambda m, i: None,
                      on_published=lambda mid, why: None, max_in_flight=256)
    assert [c.client_id for c in link.connections] == ["gw", "gw-replies"]
    assert link.sessions[0].connection.subscriptions == _subs(1)


def test_each_route_gets_a_session_with_its_own_client_id_and_share_of_the_bound():
    link = BrokerLink(MqttConfig(client_id="gw"), _subs(3), on_message=lambda m, i: None,
                      on_published=lambda mid, why: None, max_in_flight=256)
    assert [c.client_id for c in link.connections] == ["gw", "gw-s2", "gw-s3", "gw-replies"]
    assert [s.connection.subscriptions for s in link.sessions] == [[sub] for sub in _subs(3)]
    assert [s._receive_maximum for s in link.sessions] == [86, 85, 85]  # 256 in all


def test_never_more_sessions_than_max_in_flight_allows():
    assert session_count(5, 2) == 2
    assert spread(_subs(5), [[], []]) == [[_subs(5)[0], _subs(5)[2], _subs(5)[4]], [_subs(5)[1], _subs(5)[3]]]
    assert session_count(0, 256) == 1  # HTTP only: one session, subscribed to nothing


def test_shares_add_up_to_the_bound():
    for total in (1, 7, 256):
        for count in range(1, min(total, 9) + 1):
            parts = [share(total, count, i) for i in range(count)]
            assert sum(parts) == total and min(parts) >= 1 and max(parts) - min(parts) <= 1


def test_client_ids():
    assert [session_client_id("gw-1", i) for i in range(3)] == ["gw-1", "gw-1-s2", "gw-1-s3"]


def test_a_reload_keeps_each_filter_on_the_session_holding_it():
    a, b, c, d = (Subscription(f"t/{x}", 1) for x in "abcd")
    # A new first route: spread() would move every filter; each stays, the new one goes to
    # the session with fewest.
    assert spread([d, a, b, c], [[a, c], [b]]) == [[a, c], [b, d]]
    assert spread([c], [[a, c], [b]]) == [[c], []]  # removed ones are unsubscribed


def test_a_left_over_filter_another_session_takes_is_kept_until_that_one_holds_it():
    subs = SessionSubscriptions([Subscription("t/a", 1)])
    subs.left_over([Subscription("t/a", 1), Subscription("t/b", 1), Subscription("t/gone", 1)], keep={"t/b"})
    assert subs.unsubscribe == {"t/gone"}  # t/b: only once its new session holds it


def test_a_restart_with_fewer_sessions_than_the_last_run_left_starts_at_max_in_flight_1(
        make_bridge, broker, topic_prefix):
    """A run with two routes (a session each), then a start with one route and
    ``max_in_flight = 1``: the left-over session still gets a share of at least one (MQTT
    allows no Receive Maximum of 0), and the bridge serves.  It once failed at every start."""
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/{x}", "handler": "inspect_event"} for x in "ab"])
    assert bridge.stop() == 0
    bridge.config["routes"] = [{"topic": f"{t}/a", "handler": "inspect_event"}]
    bridge.config["limits"] = {"max_in_flight": 1}
    bridge.start()
    assert rr(broker.port, f"{t}/a", "one", wait=5)["body"]["body"] == "one"


def test_a_route_moving_to_a_session_of_its_own_at_a_restart_loses_nothing(make_bridge, broker, topic_prefix,
                                                                           tmp_path):
    """A bridge whose two routes shared one session (here: max_in_flight 1) restarts with a
    session per route, as after an upgrade: route b moves to ``<client_id>-s2``.  Requests to
    b published all through the restart are all answered (the old session gives b up only
    once the new one holds it); from then on each is answered exactly once."""
    t = topic_prefix
    routes = [{"topic": f"{t}/{x}", "handler": "served_by", "reply_topic": "replies/{topic}"} for x in "ab"]
    bridge = make_bridge(routes, limits={"max_in_flight": 1})
    assert bridge.stop() == 0
    bridge.config["limits"] = {"max_in_flight": 256}
    replies = Collector(broker.port, f"replies/{t}/b", f"mv-{tmp_path.name}"[:23])
    publisher = Publisher(broker.port, f"mp-{tmp_path.name}"[:23])
    sent = threading.Event()

    def stream() -> None:
        for i in range(300):
            publisher.publish(f"{t}/b", f"r-{i:03d}", 1)
            time.sleep(0.005)
        sent.set()

    try:
        threading.Thread(target=stream, daemon=True).start()
        bridge.start()
        assert sent.wait(30)
        for i in range(100):
            publisher.publish(f"{t}/b", f"after-{i:03d}", 1)
        wanted = {f"r-{i:03d}" for i in range(300)} | {f"after-{i:03d}" for i in range(100)}

        def bodies() -> Counter[str]:
            return Counter(json.loads(p)["body"]["body"] for p in replies.snapshot())

        wait_for(lambda: set(bodies()) >= wanted, 30, "every request to b answered")
        assert bridge.stop() == 0
    finally:
        publisher.close()
        replies.close()
    answered = bodies()
    assert set(answered) == wanted
    # After the restart b is on one session only: the old one unsubscribed it.
    assert [b for b, n in answered.items() if b.startswith("after-") and n > 1] == []
    assert "requests-2 connection: connected" in bridge.log()


def test_requests_queued_in_a_session_no_longer_needed_are_answered(make_bridge, broker, topic_prefix, tmp_path):
    """Three routes (three sessions; c on ``<client_id>-s3``), stopped; requests to c wait in
    that session; restarted with routes a and c only: two sessions, c now on ``-s2``.  The
    third session still holds what was queued for c: it is connected once more, drained,
    and closed for good; every request is answered once, and the next start leaves it be."""
    t = topic_prefix
    route = {x: {"topic": f"{t}/{x}", "handler": "served_by", "reply_topic": "replies/{topic}"} for x in "abc"}
    bridge = make_bridge([route["a"], route["b"], route["c"]])
    assert bridge.stop() == 0
    replies = Collector(broker.port, f"replies/{t}/c", f"dr-{tmp_path.name}"[:23])
    publisher = Publisher(broker.port, f"dp-{tmp_path.name}"[:23])
    try:
        for i in range(50):
            publisher.publish(f"{t}/c", f"q-{i:02d}", 1)
        wait_for(lambda: publisher.unacknowledged() == 0, 10, "the broker took every request")
        bridge.config["routes"] = [route["a"], route["c"]]
        bridge.start()
        publisher.publish(f"{t}/c", "after", 1)

        def bodies() -> Counter[str]:
            return Counter(json.loads(p)["body"]["body"] for p in replies.snapshot())

        wait_for(lambda: len(bodies()) >= 51, 20, "every request to c answered")
        bridge.wait_for_log("drained and closed", 30)
        assert bridge.stop() == 0
        bridge.start()
        assert bridge.stop() == 0
    finally:
        publisher.close()
        replies.close()
    assert bodies() == Counter([f"q-{i:02d}" for i in range(50)] + ["after"])
    log = bridge.log()
    assert log.count("drained and closed") == 1  # the second start had nothing to drain
