"""Calls inside one worker process: the thread that reads a batch runs it, and a slow call
never holds up the others (real daemon, real worker process, real broker)."""

from __future__ import annotations

import json
import threading
from collections import Counter

from tests.support.load import Collector, Requester, at_once, bulk_publish
from tests.support.waiting import wait_for


def _bodies(replies: list[bytes]) -> list[dict]:
    out = [json.loads(r) for r in replies]
    assert all(r["status_code"] == 200 for r in out), out
    return [r["body"] for r in out]


def test_blocking_calls_run_side_by_side_up_to_the_routes_concurrency(make_bridge, broker, topic_prefix, tmp_path):
    """Four calls sent at once to a function that sleeps, concurrency 4, one worker: all four
    run at the same time (each starts before any ends), on four threads of the one process."""
    t = topic_prefix
    make_bridge([{"topic": f"{t}/nap", "handler": "nap", "concurrency": 4}], workers={"processes": 1})
    replies = at_once(broker.port, f"{t}/nap", 4, f"n-{tmp_path.name}", join=15,
                      user_properties=[("query", "sleep=0.5")], timeout=10)
    bodies = _bodies(replies)
    assert len(bodies) == 4
    assert len({b["pid"] for b in bodies}) == 1
    assert len({b["thread"] for b in bodies}) == 4
    assert max(b["start"] for b in bodies) < min(b["end"] for b in bodies)


def test_a_fast_call_is_answered_while_a_slow_one_runs_in_the_same_worker(make_bridge, broker, topic_prefix,
                                                                          tmp_path):
    """A slow call has the worker's only busy thread; a fast route's calls sent meanwhile start,
    finish and are answered while the slow call still runs."""
    t, seen = topic_prefix, tmp_path / "seen.txt"
    make_bridge([{"topic": f"{t}/slow", "handler": "record", "timeout": 30},
                 {"topic": f"{t}/fast", "handler": "nap"}], workers={"processes": 1})
    slow_rq = Requester(broker.port, f"s-{tmp_path.name}"[:23])
    fast_rq = Requester(broker.port, f"f-{tmp_path.name}"[:23])
    slow: list[bytes] = []
    try:
        waiter = threading.Thread(target=lambda: slow.append(slow_rq.request(
            f"{t}/slow", "slow", user_properties=[("query", f"file={seen}&sleep=3")], timeout=20)[0]))
        waiter.start()
        wait_for(lambda: seen.exists() and seen.read_text() == "slow\n", 10, "the slow call to start")
        fast = _bodies([fast_rq.request(f"{t}/fast", "x", timeout=10)[0] for _ in range(5)])
        slow_running = waiter.is_alive()
        waiter.join(20)
    finally:
        slow_rq.close()
        fast_rq.close()
    assert slow_running, "the fast calls were answered only after the slow one"
    assert json.loads(slow[0])["status_code"] == 200
    assert len({b["pid"] for b in fast}) == 1


def test_hundreds_of_requests_behind_a_stuck_call_are_all_answered(make_bridge, broker, topic_prefix, tmp_path):
    """``thread`` mode, concurrency 1: a call stuck past its timeout holds the route's only
    thread, 300 requests wait behind it.  At the timeout it is answered 504 and each waiting
    one 503 at once.  Those refusals once started the next waiting call from inside the last
    (one level of recursion each): past ~200 Python's limit was hit and none was answered."""
    t = topic_prefix
    make_bridge([{"topic": f"{t}/slow", "handler": "slow", "timeout": 1, "concurrency": 1,
                  "reply_topic": "replies/{topic}"}], workers={"mode": "thread"}, limits={"max_in_flight": 1000})
    replies = Collector(broker.port, f"replies/{t}/slow", f"st-{tmp_path.name}"[:23])
    try:
        bulk_publish(broker.port, f"{t}/slow", [b"5"] + [b"0"] * 300)
        wait_for(lambda: replies.count() >= 301, 30, "301 replies")
        statuses = Counter(json.loads(p)["status_code"] for p in replies.snapshot())
    finally:
        replies.close()
    assert statuses == {504: 1, 503: 300}, statuses
