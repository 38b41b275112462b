"""Topic filters: validation and matching (``+`` one level, ``#`` the rest)."""

from __future__ import annotations


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches the MQTT ``topic_filter``.

    As the MQTT spec requires, wildcards at the first level do not match topics starting
    with ``$`` (``#`` does not match ``$SYS/...``).
    """
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
