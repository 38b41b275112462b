"""Replies produced while the broker is away: kept, published on reconnect, function run once."""

from __future__ import annotations

import json

from bridge.message import Outbound, pack_publish_properties
from bridge.replystore import ReplyStore
from tests.support.clients import Sub, pub
from tests.support.waiting import file_lines


def _start(make_bridge, own_broker, topic_prefix, tmp_path, **limits):
    return make_bridge(
        [{"topic": f"{topic_prefix}/work", "handler": "record", "reply_topic": "replies/{topic}"}],
        on=own_broker, replies={"store": str(tmp_path / "replies.db")}, limits=limits or {"shutdown_grace": 10},
    )


def test_reply_finished_while_broker_down_is_published_on_reconnect(make_bridge, own_broker, topic_prefix, tmp_path):
    t = topic_prefix
    seen = tmp_path / "seen.txt"
    bridge = _start(make_bridge, own_broker, t, tmp_path)
    sub = Sub(own_broker.port, f"replies/{t}/work", tmp_path, extra=["-c", "-i", f"sub-{tmp_path.name}"[:23]])
    try:
        pub(own_broker.port, f"{t}/work", "while-away",
            props=[("publish", "user-property", "query", f"file={seen}&sleep=1")])
        file_lines(seen, 1)  # the function is running
        own_broker.stop()
        bridge.wait_for_log("reply for")  # the function finished while the broker is down
        assert "parked until the broker is back" in bridge.log()
        own_broker.start()
        bridge.wait_for_log("publishing 1 repl(ies) made while the broker was away", timeout=15)
        replies = sub.wait_lines(1, timeout=20)
    finally:
        sub.close()
    assert json.loads(replies[0].split(" ", 1)[1])["body"] == "while-away"
    # The broker redelivered the unacknowledged request on reconnect; the function ran once.
    assert seen.read_text().splitlines() == ["while-away"]


def test_stored_reply_survives_a_bridge_restart(make_bridge, own_broker, topic_prefix, tmp_path):
    t = topic_prefix
    seen = tmp_path / "seen.txt"
    bridge = _start(make_bridge, own_broker, t, tmp_path, shutdown_grace=0.5)
    sub = Sub(own_broker.port, f"replies/{t}/work", tmp_path, extra=["-c", "-i", f"sub-{tmp_path.name}"[:23]])
    try:
        pub(own_broker.port, f"{t}/work", "kept",
            props=[("publish", "user-property", "query", f"file={seen}&sleep=1")])
        file_lines(seen, 1)
        own_broker.stop()
        bridge.wait_for_log("disconnected from the broker")
        # The function finishes while the broker is down; then the bridge is stopped with the
        # reply unpublished and the request unacknowledged.
        bridge.wait_for_log("parked until the broker is back")
        assert bridge.stop() == 0
        assert "unfinished after" in bridge.log()
        own_broker.start()
        bridge.start()
        bridge.wait_for_log("1 stored repl(ies) wait for their redelivered requests")
        replies = sub.wait_lines(1, timeout=20)
    finally:
        sub.close()
    assert json.loads(replies[0].split(" ", 1)[1])["body"] == "kept"
    assert seen.read_text().splitlines() == ["kept"]  # not run again after the restart


def test_a_stored_reply_comes_back_as_it_was_stored(tmp_path):
    """User properties (a "body" reply's headers) may hold newlines and tabs: they once came
    back split apart, and publishing the reply after the restart failed."""
    out = Outbound("replies/x", b"body", 1, b"cid", "text/plain",
                   [("status", "200"), ("X-Note", "line 1\nline 2"), ("X-Tab", "a\tb"), ("X-Empty", "")])
    ReplyStore(tmp_path / "r.db", 3600).save("k", out)
    back = ReplyStore(tmp_path / "r.db", 3600).take("k")
    assert back == out
    assert pack_publish_properties(back) == pack_publish_properties(out)
