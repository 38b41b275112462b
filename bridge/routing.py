"""Topic filters: matching (``+`` one level, ``#`` the rest), shared subscriptions, and
where replies may go.

A shared subscription ``$share/<group>/<filter>`` makes the broker hand each message to one
member of the group; the messages themselves carry topics matching ``<filter>``.  Everything
here that matches topics works on that filter, so a route behaves the same shared or not.
"""

from __future__ import annotations

SHARED_PREFIX = "$share/"


def is_shared(topic_filter: str) -> bool:
    return topic_filter.startswith(SHARED_PREFIX)


def topic_filter_of(subscription: str) -> str:
    """The topic filter of a subscription: ``$share/g/a/+`` -> ``a/+``; others unchanged."""
    if subscription.startswith(SHARED_PREFIX):
        return subscription.split("/", 2)[-1]
    return subscription


def subscription_topic(route_topic: str, share_group: str | None) -> str:
    """What a route subscribes to: its topic, in the share group ``[mqtt] share_group`` when
    one is set, unless the topic names its own group already."""
    if share_group is None or route_topic.startswith(SHARED_PREFIX):
        return route_topic
    return f"{SHARED_PREFIX}{share_group}/{route_topic}"


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches the MQTT ``topic_filter`` (a shared subscription's
    ``$share/<group>/`` prefix is not part of the filter).

    As the MQTT spec requires, wildcards at the first level do not match topics starting
    with ``$`` (``#`` does not match ``$SYS/...``).
    """
    if topic_filter.startswith(SHARED_PREFIX):
        topic_filter = topic_filter.split("/", 2)[-1]
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def is_publishable(topic: str) -> bool:
    """True for a topic the bridge may publish to: non-empty, no wildcards, no ``$`` prefix."""
    return bool(topic) and "+" not in topic and "#" not in topic and not topic.startswith("$") \
        and "\x00" not in topic and len(topic.encode("utf-8", "surrogatepass")) <= 65535


class ReplyPolicy:
    """Decides which topics the bridge may publish a reply to.

    A response topic named by a request must match ``replies.allowed_topics``; a route's reply
    template is the operator's own choice and need not.  Neither may be invalid (wildcards,
    ``$``) nor land on a topic a route subscribes to (the reply would run a function again, in
    a loop).  Verdicts are cached, in a bounded cache: topics are chosen by whoever publishes.
    """

    MAX_CACHED = 4096

    def __init__(self, allowed_topics: list[str], route_filters: list[str]) -> None:
        self._allowed = allowed_topics
        self._filters = route_filters
        self._verdicts: dict[tuple[str, bool], str] = {}

    def refusal(self, topic: str, *, requested: bool) -> str:
        """Why a reply must not go to ``topic`` ("" when it may).  ``requested``: the topic
        came from the request (its MQTT v5 Response Topic), not from the route."""
        # Keyed by kind too: a template may reply outside the allow-list, a request may not.
        verdict = self._verdicts.get((topic, requested))
        if verdict is not None:
            return verdict
        if not is_publishable(topic):
            verdict = "is not a valid topic to publish to (empty, wildcards or $)"
        elif requested and not any(matches(f, topic) for f in self._allowed):
            verdict = "is not in replies.allowed_topics"
        elif any(matches(f, topic) for f in self._filters):
            verdict = "would be routed to a function again (a loop)"
        else:
            verdict = ""
        if len(self._verdicts) >= self.MAX_CACHED:
            self._verdicts.clear()
        self._verdicts[(topic, requested)] = verdict
        return verdict
