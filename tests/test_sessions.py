"""How routes are spread over request sessions (bridge.sessions), without a broker; with one,
tests/test_limits.py shows why: a flood on one route does not hold up another."""

from __future__ import annotations

from bridge.config import MqttConfig
from bridge.link import BrokerLink
from bridge.message import Subscription
from bridge.sessions import session_client_id, session_count, share, spread


def _subs(n: int) -> list[Subscription]:
    return [Subscription(f"t/{i}", 1, i + 1) for i in range(n)]


def test_one_route_keeps_the_one_session_it_always_had():
    link = BrokerLink(MqttConfig(client_id="gw"), _subs(1), on_message=lambda m, i: None,
                      on_published=lambda mid: None, max_in_flight=256)
    assert [c.client_id for c in link.connections] == ["gw", "gw-replies"]
    assert link.sessions[0].connection.subscriptions == _subs(1)


def test_each_route_gets_a_session_with_its_own_client_id_and_share_of_the_bound():
    link = BrokerLink(MqttConfig(client_id="gw"), _subs(3), on_message=lambda m, i: None,
                      on_published=lambda mid: None, max_in_flight=256)
    assert [c.client_id for c in link.connections] == ["gw", "gw-s2", "gw-s3", "gw-replies"]
    assert [s.connection.subscriptions for s in link.sessions] == [[sub] for sub in _subs(3)]
    assert [s._receive_maximum for s in link.sessions] == [86, 85, 85]  # 256 in all


def test_never_more_sessions_than_max_in_flight_allows():
    assert session_count(5, 2) == 2
    assert spread(_subs(5), 2) == [[_subs(5)[0], _subs(5)[2], _subs(5)[4]], [_subs(5)[1], _subs(5)[3]]]
    assert session_count(0, 256) == 1  # HTTP only: one session, subscribed to nothing


def test_shares_add_up_to_the_bound():
    for total in (1, 7, 256):
        for count in range(1, min(total, 9) + 1):
            parts = [share(total, count, i) for i in range(count)]
            assert sum(parts) == total and min(parts) >= 1 and max(parts) - min(parts) <= 1


def test_client_ids():
    assert [session_client_id("gw-1", i) for i in range(3)] == ["gw-1", "gw-1-s2", "gw-1-s3"]
