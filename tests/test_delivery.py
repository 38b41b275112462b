"""Delivery guarantees with real processes and real signals."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.support.clients import Sub, pub
from tests.support.waiting import file_lines


def _bodies(lines: list[str]) -> list[str]:
    return [json.loads(line.split(" ", 1)[1])["body"] for line in lines]


def test_requests_in_flight_when_sigkilled_are_answered_after_restart(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    seen = tmp_path / "seen.txt"
    bridge = make_bridge([{"topic": f"{t}/work", "handler": "record", "reply_topic": "replies/{topic}",
                           "concurrency": 1}])
    sub = Sub(broker.port, f"replies/{t}/work", tmp_path)
    try:
        query = ("publish", "user-property", "query", f"file={seen}&sleep=1")
        for i in range(5):
            pub(broker.port, f"{t}/work", f"req-{i}", props=[query])
        file_lines(seen, 1)  # the first call is running, four more wait in the bridge
        bridge.kill()
        assert sub.lines() == []  # nothing was answered before the kill
        bridge.start()
        replies = sub.wait_lines(5, timeout=30)
    finally:
        sub.close()
    assert sorted(_bodies(replies)) == [f"req-{i}" for i in range(5)]
    # The call interrupted by the kill ran again: it was redelivered, not lost.
    assert seen.read_text().splitlines().count("req-0") == 2


def test_sigterm_finishes_in_flight_work_and_exits_0(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    seen = tmp_path / "seen.txt"
    bridge = make_bridge([{"topic": f"{t}/work", "handler": "record", "reply_topic": "replies/{topic}"}])
    sub = Sub(broker.port, f"replies/{t}/work", tmp_path)
    try:
        pub(broker.port, f"{t}/work", "last", props=[("publish", "user-property", "query", f"file={seen}&sleep=1")])
        file_lines(seen, 1)
        bridge.signal(signal.SIGTERM)
        assert bridge.wait(20) == 0
        assert _bodies(sub.wait_lines(1)) == ["last"]
    finally:
        sub.close()
    assert "stopped" in bridge.log()


def test_sigint_exits_0(make_bridge, topic_prefix):
    bridge = make_bridge([{"topic": f"{topic_prefix}/x", "handler": "echo_async"}],
                         handlers_dir=Path(__file__).parents[1] / "handlers")
    bridge.signal(signal.SIGINT)
    assert bridge.wait(20) == 0


def test_poison_message_is_answered_once_and_not_redelivered(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/poison", "handler": "boom", "reply_topic": "replies/{topic}"}])
    sub = Sub(broker.port, f"replies/{t}/poison", tmp_path)
    try:
        pub(broker.port, f"{t}/poison", "first")
        assert json.loads(sub.wait_lines(1)[0].split(" ", 1)[1])["status_code"] == 500
        bridge.stop()
        bridge.start()
        # Queued messages come before new ones: had "first" been redelivered, its second
        # answer would arrive before the answer to "second".
        pub(broker.port, f"{t}/poison", "second")
        lines = sub.wait_lines(2)
        bridge.wait_for_log("ready: subscribed", occurrence=2)
    finally:
        sub.close()
    messages = [json.loads(line.split(" ", 1)[1])["body"]["error"]["message"] for line in lines]
    assert messages == ["ValueError at line 3: cannot use 5 bytes", "ValueError at line 3: cannot use 6 bytes"]
