"""No crash loop: a message that kills the bridge is not run a third time.

A shell loop playing systemd's ``Restart=on-failure`` restarts the real daemon each time it
dies; the deadly message is redelivered by the real broker.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.support.clients import Sub, pub, rr
from tests.support.waiting import file_lines, wait_for
from tests.support.web import samples, value

RESTARTS = 5  # the loop gives up after this many deaths (systemd's StartLimitBurst is 5)


def _restart_loop(bridge, until, kill=None) -> int:
    """Start the bridge until ``until()`` holds while it runs; return how many times it died.
    ``kill()``, when given, kills it the way the test wants (else it dies by itself)."""
    deaths = 0
    while deaths < RESTARTS:
        bridge.start(wait_ready=False)  # it may die before it is ready: the message comes first
        if kill is not None:
            kill(deaths)
        ended = wait_for(lambda: until() or bridge.proc.poll() is not None, 20, "an answer or a death")
        if bridge.proc.poll() is None and until():
            return deaths
        assert ended
        deaths += 1
    return deaths


@pytest.mark.parametrize("qos", [1, 2])
def test_a_message_that_kills_the_daemon_in_thread_mode_runs_at_most_twice(make_bridge, broker, topic_prefix,
                                                                          tmp_path, qos):
    t, seen = topic_prefix, tmp_path / "seen.txt"
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "reply_topic": "replies/{topic}", "qos": qos}],
                         workers={"mode": "thread"})
    sub = Sub(broker.port, f"replies/{t}/deadly", tmp_path)
    try:
        pub(broker.port, f"{t}/deadly", "exit", qos=qos,
            props=[("publish", "user-property", "query", f"file={seen}")])
        wait_for(lambda: bridge.proc.poll() is not None, 10, "the daemon to die")
        deaths = 1 + _restart_loop(bridge, lambda: bool(sub.lines()) or (qos == 2 and _serving(broker, t)))
        assert deaths <= 2, bridge.log()
        runs = file_lines(seen, 1)
        if qos == 1:
            # Redelivered once after the first death, refused after the second: answered, acknowledged.
            reply = sub.wait_lines(1)[0]
            assert "this request crashed the bridge twice; not run again" in reply
            assert len(runs) == 2
        else:
            # QoS 2: the broker resends only PUBREL, never the message: it cannot loop.
            assert len(runs) == 1
        assert rr(broker.port, f"{t}/deadly", "fine")["status_code"] == 200  # and it serves on
    finally:
        sub.close()


def _serving(broker, t: str) -> bool:
    return rr(broker.port, f"{t}/deadly", "probe")["status_code"] == 200


@pytest.mark.parametrize("qos", [1, 2])
def test_a_message_running_when_the_daemon_is_killed_twice_is_not_run_a_third_time(make_bridge, broker,
                                                                                  topic_prefix, tmp_path, qos):
    """Process mode: a worker's death never kills the daemon, but the daemon itself can be
    killed (an OOM kill, a power cut) while a request runs."""
    t, seen = topic_prefix, tmp_path / "seen.txt"
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "reply_topic": "replies/{topic}",
                           "qos": qos, "timeout": 60}], start=False)
    sub = Sub(broker.port, f"replies/{t}/deadly", tmp_path)
    orphans: list[int] = []
    try:
        def kill(deaths: int) -> None:
            if deaths < 2:
                file_lines(seen, deaths + 1, timeout=20)  # the function is running (again)
                orphans.extend(_children(bridge.proc.pid))
                bridge.proc.send_signal(signal.SIGKILL)

        bridge.start()
        pub(broker.port, f"{t}/deadly", "sleep:30", qos=qos,
            props=[("publish", "user-property", "query", f"file={seen}")])
        kill(0)
        wait_for(lambda: bridge.proc.poll() is not None, 10, "the daemon to die")
        if qos == 1:
            deaths = 1 + _restart_loop(bridge, lambda: bool(sub.lines()), kill=lambda d: kill(d + 1))
            assert deaths == 2
            assert "this request crashed the bridge twice; not run again" in sub.wait_lines(1)[0]
            assert len(file_lines(seen, 2)) == 2
        else:
            bridge.start()
            assert len(file_lines(seen, 1)) == 1  # not redelivered (see the QoS 2 test above)
        assert rr(broker.port, f"{t}/deadly", "fine")["status_code"] == 200
        # The daemon's workers died with it: none is left behind.
        assert orphans
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in orphans), 5, "the workers to die")
    finally:
        sub.close()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _deadly(make_bridge, broker, t: str, tmp_path: Path, concurrency: int):
    """A bridge with the ``deadly`` route at QoS 1, a subscriber to its replies, and the user
    property that makes each call append its body and pid to ``tmp_path/seen.txt``."""
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "reply_topic": "replies/{topic}",
                           "qos": 1, "concurrency": concurrency, "timeout": 60}])
    sub = Sub(broker.port, f"replies/{t}/deadly", tmp_path)
    return bridge, sub, [("publish", "user-property", "query", f"file={tmp_path / 'seen.txt'}")]


def test_identical_requests_in_hand_at_one_death_are_both_run_again(make_bridge, broker, topic_prefix, tmp_path):
    """Two identical requests (a poll from two devices) were running when the daemon died
    once.  Both are run again and answered: one of them was once taken for the other's second
    death and refused."""
    t, seen = topic_prefix, tmp_path / "seen.txt"
    bridge, sub, query = _deadly(make_bridge, broker, t, tmp_path, concurrency=2)
    try:
        for _ in range(2):
            pub(broker.port, f"{t}/deadly", "sleep:1", qos=1, props=query)
        file_lines(seen, 2)  # both running
        bridge.proc.send_signal(signal.SIGKILL)
        bridge.wait(10)
        bridge.start()
        replies = sub.wait_lines(2, timeout=20)
    finally:
        sub.close()
    assert not any("crashed the bridge twice" in r for r in replies), replies
    assert len(file_lines(seen, 4)) == 4  # each ran before the death and once after


def test_a_request_waiting_for_its_slot_through_two_deaths_is_run(make_bridge, broker, topic_prefix, tmp_path):
    """Concurrency 1: a call hangs, another request waits for the slot, and the daemon is
    killed twice (OOM kills).  The hung one is refused after its two runs; the waiting one,
    which never ran, runs and is answered.  It was counted on arrival and refused unrun."""
    t, seen = topic_prefix, tmp_path / "seen.txt"
    bridge, sub, query = _deadly(make_bridge, broker, t, tmp_path, concurrency=1)
    try:
        pub(broker.port, f"{t}/deadly", "sleep:30", qos=1, props=query)
        pub(broker.port, f"{t}/deadly", "waiting", qos=1, props=query)
        for death in range(2):
            file_lines(seen, death + 1, timeout=20)  # the hung call runs (again)
            wait_for(lambda: value(samples(bridge.http_url), "iot_bridge_in_flight") == 2, 10, "both in hand")
            bridge.proc.send_signal(signal.SIGKILL)
            bridge.wait(10)
            bridge.start()
        replies = sorted(json.loads(line.split(" ", 1)[1])["status_code"] for line in sub.wait_lines(2, timeout=20))
    finally:
        sub.close()
    assert replies == [200, 500]
    assert [line.split()[0] for line in seen.read_text().splitlines()] == ["sleep:30", "sleep:30", "waiting"]
