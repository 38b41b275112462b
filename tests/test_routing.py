"""Topic filter matching, publishable topics and the reply policy (bridge.routing)."""

from __future__ import annotations

import pytest

from bridge.routing import ReplyPolicy, is_publishable, matches, subscription_topic, topic_filter_of


@pytest.mark.parametrize(
    "topic_filter, topic",
    [
        ("a/b", "a/b"),
        ("a/+", "a/b"),
        ("+/b", "a/b"),
        ("+/+", "a/b"),
        ("a/+/c", "a/b/c"),
        ("a/+", "a/"),  # an empty level is a level
        ("+/x", "/x"),
        ("#", "a"),
        ("#", "a/b/c"),
        ("#", "/"),
        ("a/#", "a"),  # '#' also matches the parent level
        ("a/#", "a/b"),
        ("a/#", "a/b/c/d"),
        ("a/+/#", "a/b"),
        ("a/+/#", "a/b/c/d"),
        ("$SYS/#", "$SYS/broker/load"),
        ("$SYS/+/load", "$SYS/broker/load"),
        ("$SYS/broker", "$SYS/broker"),
        ("spaces/+/things/+/properties/#", "spaces/s1/things/01H/properties/temperature"),
    ],
)
def test_matches(topic_filter, topic):
    assert matches(topic_filter, topic) is True


@pytest.mark.parametrize(
    "topic_filter, topic",
    [
        ("a/b", "a/c"),
        ("a/b", "a/b/c"),
        ("a/b/c", "a/b"),
        ("a/+", "a"),
        ("a/+", "a/b/c"),
        ("+", "a/b"),
        ("+/+", "a"),
        ("a/#", "b"),
        ("a/#", "ab"),
        ("a/+/#", "a"),
        ("A/b", "a/b"),  # case-sensitive
        ("#", "$SYS/broker/load"),  # wildcards at the first level never match '$' topics
        ("+/broker/load", "$SYS/broker/load"),
        ("+", "$SYS"),
        ("#", "$share"),
    ],
)
def test_does_not_match(topic_filter, topic):
    assert matches(topic_filter, topic) is False


@pytest.mark.parametrize("topic", ["a", "a/b", "replies/x/y", "/leading", "trailing/", "ünï/cøde"])
def test_publishable(topic):
    assert is_publishable(topic) is True


@pytest.mark.parametrize(
    "topic",
    ["", "a/+", "a/#", "+", "#", "a+b", "$SYS/x", "$reply", "a\x00b", "x" * 65536, "é" * 32768],
)
def test_not_publishable(topic):
    assert is_publishable(topic) is False


def test_longest_publishable_topic_is_65535_bytes():
    assert is_publishable("x" * 65535) is True


def test_reply_policy_checks_requested_topics_against_the_allow_list_only():
    policy = ReplyPolicy(["replies/#"], ["functions/+"])
    assert policy.refusal("replies/me", requested=True) == ""
    assert policy.refusal("elsewhere/me", requested=True) == "is not in replies.allowed_topics"
    assert policy.refusal("elsewhere/me", requested=False) == ""  # the operator's template


@pytest.mark.parametrize("topic", ["", "replies/+", "replies/#", "$SYS/x"])
def test_reply_policy_refuses_invalid_topics(topic):
    policy = ReplyPolicy(["#", "$SYS/#"], [])
    assert "not a valid topic" in policy.refusal(topic, requested=True)
    assert "not a valid topic" in policy.refusal(topic, requested=False)


def test_reply_policy_refuses_a_topic_a_route_subscribes_to():
    policy = ReplyPolicy(["#"], ["functions/+"])
    for requested in (True, False):
        assert "loop" in policy.refusal("functions/echo", requested=requested)


def test_reply_policy_cache_is_bounded():
    policy = ReplyPolicy(["#"], [])
    for i in range(ReplyPolicy.MAX_CACHED * 2):
        assert policy.refusal(f"t/{i}", requested=True) == ""
    assert len(policy._verdicts) <= ReplyPolicy.MAX_CACHED


# -- shared subscriptions ------------------------------------------------------------------------

def test_a_shared_subscription_matches_by_its_topic_filter():
    assert matches("$share/g/a/+", "a/b") and matches("$share/g/#", "x/y") and matches("$share/g/a/#", "a")
    assert not matches("$share/g/a/+", "b/c")
    assert not matches("$share/g/#", "$SYS/x")  # the filter's first-level wildcard, not "$share"
    assert not matches("$share/g/a", "$share/g/a")  # the prefix is not part of the filter


def test_a_route_subscribes_in_the_share_group_unless_it_names_its_own():
    assert subscription_topic("a/+", None) == "a/+"
    assert subscription_topic("a/+", "g") == "$share/g/a/+"
    assert subscription_topic("$share/h/a/+", "g") == "$share/h/a/+"
    assert subscription_topic("$share/h/a/+", None) == "$share/h/a/+"
    assert topic_filter_of("$share/h/a/+") == "a/+" and topic_filter_of("a/+") == "a/+"


def test_reply_policy_refuses_a_reply_to_a_shared_routes_topic():
    policy = ReplyPolicy(["#"], ["$share/g/functions/+"])
    for requested in (True, False):
        assert "loop" in policy.refusal("functions/echo", requested=requested)
    assert policy.refusal("replies/echo", requested=True) == ""
