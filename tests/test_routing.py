"""Topic filter matching and publishable topics (bridge.routing)."""

from __future__ import annotations

import pytest

from bridge.routing import is_publishable, matches


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
