"""Functions are other people's code: crashes, hangs, hogs and CPU burners in real worker
processes, killed for real, with a real broker and the real daemon."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from tests.support.clients import rr
from tests.support.faults import injected
import time

from tests.support.load import Requester, at_once, figures, p50, proc_memory
from tests.support.waiting import file_lines, wait_for
from tests.support.web import samples, value


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _error(reply: dict) -> str:
    return reply["body"]["error"]["message"]


@pytest.mark.parametrize("what, how", [("exit", "exited with status 7"),
                                       ("segv", "was killed by signal 11 (SIGSEGV)")])
def test_a_worker_that_dies_mid_call_answers_500_and_is_replaced(make_bridge, broker, topic_prefix, tmp_path,
                                                                  what, how):
    t, seen = topic_prefix, tmp_path / "seen.txt"
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly"},
                          {"topic": f"{t}/other", "handler": "inspect_event"}], workers={"processes": 2})
    workers = wait_for(lambda: len(_children(bridge.proc.pid)) == 2 and _children(bridge.proc.pid), 10, "2 workers")
    # Under the unit's MemoryMax the kernel kills a worker before the daemon.
    assert [int(open(f"/proc/{pid}/oom_score_adj").read()) for pid in workers] == [500, 500]
    query = ("publish", "user-property", "query", f"file={seen}")
    start = time.monotonic()
    reply = rr(broker.port, f"{t}/deadly", what, props=[query])
    answered = time.monotonic() - start
    assert reply["status_code"] == 500
    assert _error(reply) == f"function deadly {how}"
    # Replaced: two workers again, one of them new; both routes serve.
    wait_for(lambda: len(_children(bridge.proc.pid)) == 2 and set(_children(bridge.proc.pid)) != set(workers),
             10, "a replacement worker")
    figures(f"worker_{what}", answered_s=round(answered, 3), replaced_within_s=round(time.monotonic() - start, 3))
    assert rr(broker.port, f"{t}/deadly", "fine", props=[query])["status_code"] == 200
    assert rr(broker.port, f"{t}/other", "x")["status_code"] == 200
    assert f"function deadly: 500 WorkerDied: function deadly {how}" in bridge.log()
    # Acknowledged: after a restart the deadly request is not delivered again.
    bridge.stop()
    bridge.start()
    assert rr(broker.port, f"{t}/deadly", "after", props=[query])["status_code"] == 200
    assert [line.split()[0] for line in seen.read_text().splitlines()] == [what, "fine", "after"]


def test_a_worker_killed_from_outside_fails_only_its_own_calls(make_bridge, broker, topic_prefix, tmp_path):
    t, seen = topic_prefix, tmp_path / "seen.txt"
    make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "timeout": 20}], workers={"processes": 2})
    query = [("query", f"file={seen}")]
    victim_rq, other_rq = Requester(broker.port, f"kv-{tmp_path.name}"[:23]), Requester(broker.port, f"ko-{tmp_path.name}"[:23])
    results: dict[str, bytes] = {}
    try:
        victim = threading.Thread(target=lambda: results.update(victim=victim_rq.request(
            f"{t}/deadly", "sleep:10", user_properties=query, timeout=15)[0]))
        victim.start()
        line = file_lines(seen, 1)[0]
        other = threading.Thread(target=lambda: results.update(other=other_rq.request(
            f"{t}/deadly", "sleep:1", user_properties=query, timeout=15)[0]))
        other.start()
        lines = file_lines(seen, 2)
        assert lines[0].split()[1] != lines[1].split()[1], "the second call must run on the other worker"
        os.kill(int(line.split()[1]), signal.SIGKILL)
        victim.join(15)
        other.join(15)
    finally:
        victim_rq.close()
        other_rq.close()
    killed, spared = json.loads(results["victim"]), json.loads(results["other"])
    figures("worker_sigkill", victim=killed["status_code"], other_worker=spared["status_code"])
    assert killed["status_code"] == 500
    assert killed["body"]["error"]["message"] == "function deadly was killed by signal 9 (SIGKILL)"
    assert spared["status_code"] == 200  # the call on the other worker was not disturbed


def test_a_call_past_the_memory_limit_fails_alone_and_the_daemon_stays_small(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly"}],
                         workers={"processes": 1, "memory_limit_mb": 200})
    assert rr(broker.port, f"{t}/deadly", "hog:50")["status_code"] == 200
    before = proc_memory(bridge.proc.pid)["VmRSS"]
    reply = rr(broker.port, f"{t}/deadly", "hog:1024")
    assert reply["status_code"] == 500
    assert reply["body"]["error"]["details"]["exception_type"] == "MemoryError"
    assert rr(broker.port, f"{t}/deadly", "hog:50")["status_code"] == 200  # the worker lives on
    after = proc_memory(bridge.proc.pid)["VmRSS"]
    figures("memory_hog", limit_mb=200, asked_mb=1024, daemon_rss_before_kib=before, daemon_rss_after_kib=after)
    assert after - before < 5 * 1024  # KiB: the daemon never held it


def test_runaway_calls_are_stopped_and_never_pile_up(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    processes = 2
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "timeout": 0.5, "concurrency": 4}],
                         workers={"processes": processes})
    rq = Requester(broker.port, f"sp-{tmp_path.name}"[:23])
    answered: list[float] = []
    try:
        for _ in range(3 * processes):  # more runaway calls than there are workers
            reply, seconds = rq.request(f"{t}/deadly", "spin", timeout=10)
            assert json.loads(reply)["status_code"] == 504
            assert 0.5 <= seconds < 3, seconds  # answered at its timeout, not after the others
            answered.append(round(seconds, 3))
        reply, _ = rq.request(f"{t}/deadly", "fine", timeout=10)
    finally:
        rq.close()
    assert json.loads(reply)["status_code"] == 200
    figures("runaway_calls", timeout_s=0.5, processes=processes, answered_504_s=answered)
    # Each spinning worker was killed: no more processes than configured remain.
    wait_for(lambda: len(_children(bridge.proc.pid)) == processes, 10, f"{processes} workers")
    assert bridge.log().count("is replaced: a call to deadly outlived its timeout") == 3 * processes


def _ask(port: int, topic: str, bodies: list[str], wait: float = 15) -> list[dict]:
    """``mosquitto_rr`` each body at the same time; the replies in the order of ``bodies``."""
    replies: list[dict] = [{}] * len(bodies)

    def one(i: int) -> None:
        replies[i] = rr(port, topic, bodies[i], wait=wait)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(wait + 10)
    return replies


def test_runaway_calls_sharing_one_worker_are_stopped(make_bridge, broker, topic_prefix):
    """Three calls spinning at once on the only worker: each is answered 504, and the worker
    is killed and replaced.  It was left spinning once the second call on it timed out."""
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "timeout": 1, "concurrency": 3}],
                         workers={"processes": 1})
    first = _children(bridge.proc.pid)
    assert [r["status_code"] for r in _ask(broker.port, f"{t}/deadly", ["spin"] * 3)] == [504] * 3
    wait_for(lambda: (kids := _children(bridge.proc.pid)) and not set(kids) & set(first), 10,
             "the spinning worker gone, a new one in its place")
    assert rr(broker.port, f"{t}/deadly", "fine")["status_code"] == 200


def test_a_call_running_away_through_a_reload_is_stopped(make_bridge, broker, topic_prefix, tmp_path):
    """A call spinning when SIGHUP replaces the workers: the old worker finishes its calls
    gracefully, but this one only ends at its timeout (504), and then the worker is killed.
    It was left spinning for good."""
    t = topic_prefix
    seen = tmp_path / "seen.txt"
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "timeout": 2}], workers={"processes": 1})
    old = _children(bridge.proc.pid)
    replies: list[dict] = []
    asking = threading.Thread(target=lambda: replies.append(
        rr(broker.port, f"{t}/deadly", "spin", props=[("publish", "user-property", "query", f"file={seen}")])))
    asking.start()
    file_lines(seen, 1)  # spinning
    bridge.signal(signal.SIGHUP)
    bridge.wait_for_log("reload", 10)
    asking.join(20)
    assert replies and replies[0]["status_code"] == 504
    wait_for(lambda: not set(_children(bridge.proc.pid)) & set(old), 10, "the old worker gone")
    assert rr(broker.port, f"{t}/deadly", "fine")["status_code"] == 200


def test_a_call_waiting_for_a_worker_that_dies_runs_on_another(make_bridge, broker, topic_prefix, tmp_path):
    """A worker dies mid-call while another request of the route waits for the concurrency
    slot: that request runs at once on the other worker.  It was once sent to the dead
    worker and answered 504 at its timeout without running."""
    t = topic_prefix
    seen = tmp_path / "seen.txt"
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly", "timeout": 8, "concurrency": 1}],
                         workers={"processes": 2})
    query = [("publish", "user-property", "query", f"file={seen}")]
    replies: list[dict] = []
    dying = threading.Thread(target=lambda: replies.append(rr(broker.port, f"{t}/deadly", "sleep:1", props=query)))
    dying.start()
    file_lines(seen, 1)
    pid = int(seen.read_text().split()[1])
    started = time.monotonic()
    waiting = threading.Thread(target=lambda: replies.append(rr(broker.port, f"{t}/deadly", "fine", props=query)))
    waiting.start()
    wait_for(lambda: value(samples(bridge.http_url), "iot_bridge_in_flight") == 2, 5, "the second request waiting")
    os.kill(pid, signal.SIGKILL)
    dying.join(20)
    waiting.join(20)
    assert sorted(r["status_code"] for r in replies) == [200, 500], replies
    assert time.monotonic() - started < 6  # not at its 8 s timeout


def test_an_async_function_blocking_its_loop_does_not_slow_other_routes(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/wedge", "handler": "wedge", "timeout": 3},
                          {"topic": f"{t}/fast", "handler": "slow_async"}], workers={"processes": 2})
    rq = Requester(broker.port, f"fa-{tmp_path.name}"[:23])
    wedge_rq = Requester(broker.port, f"fw-{tmp_path.name}"[:23])
    wedged: list[tuple[bytes, float]] = []
    try:
        base = rq.latencies(f"{t}/fast", "0", 100)
        blocker = threading.Thread(target=lambda: wedged.append(wedge_rq.request(f"{t}/wedge", "30", timeout=15)))
        blocker.start()
        during = []
        while blocker.is_alive() and len(during) < 2000:
            during.append(rq.request(f"{t}/fast", "0")[1])
        blocker.join(15)
    finally:
        rq.close()
        wedge_rq.close()
    reply, seconds = wedged[0]
    figures("blocked_async_loop", timeout_s=3, wedge_answered_s=round(seconds, 3), fast_requests=len(during),
            p50_base_ms=round(p50(base) * 1e3, 2), p50_during_ms=round(p50(during) * 1e3, 2),
            max_during_ms=round(max(during) * 1e3, 1))
    assert json.loads(reply)["status_code"] == 504 and seconds < 4  # stopped at its timeout, not after 30 s
    assert p50(during) <= 3 * p50(base) + 0.020, (p50(base), p50(during))
    assert max(during) < 2.0, max(during)  # at worst one request waited for the blocked loop to be noticed
    assert "blocked its async loop" in bridge.log() or "outlived its timeout" in bridge.log()


@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_bound_calls_use_as_many_cores_as_there_are_workers(make_bridge, broker, topic_prefix, tmp_path,
                                                                 processes):
    t = topic_prefix
    make_bridge([{"topic": f"{t}/burn", "handler": "burn", "concurrency": 8}], workers={"processes": processes})
    replies = [json.loads(r)["body"] for r in at_once(broker.port, f"{t}/burn", 8, f"b-{tmp_path.name}", each=4)]
    assert len(replies) == 32
    pids = {r["pid"] for r in replies}
    span = max(r["end"] for r in replies) - min(r["start"] for r in replies)
    figures(f"cpu_burst_{processes}", calls=32, cpu_ms_each=30, first_start_to_last_end_s=round(span, 3))
    assert len(pids) == processes
    # Calls on different workers ran at the same time (in different processes, on different cores).
    overlapping = any(a["pid"] != b["pid"] and a["start"] < b["end"] and b["start"] < a["end"]
                      for a in replies for b in replies)
    assert overlapping == (processes > 1)


def test_a_worker_killed_from_outside_while_importing_does_not_disable_the_function(make_bridge, broker,
                                                                                   topic_prefix, tmp_path):
    """An OOM kill or an operator's kill during a worker's import is not the module's doing:
    the import is tried again.  It once blamed the module for good (503 until a reload)."""
    t = topic_prefix
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "heavy.py").write_text(
        "import os, time\n"
        "with open(__file__ + '.pids', 'a') as f:\n    f.write(f'{os.getpid()}\\n')\n"
        "time.sleep(1.5)\n\n"
        "def handle(req):\n    return {'body': 'loaded'}\n")
    bridge = make_bridge([{"topic": f"{t}/heavy", "handler": "heavy"}], handlers_dir=handlers,
                         workers={"processes": 1}, start=False).start(wait_ready=False)
    pids = file_lines(handlers / "heavy.py.pids", 1)
    os.kill(int(pids[0]), signal.SIGKILL)
    bridge.wait_ready(20)
    assert rr(broker.port, f"{t}/heavy", "x")["body"] == "loaded"
    assert "trying again" in bridge.log()


def test_a_worker_that_cannot_be_started_is_tried_again(make_bridge, broker, topic_prefix, tmp_path):
    """The system refuses a new process once (out of memory or process ids; injected here
    into the running daemon) when a worker is replaced: the bridge logs it, tries again and
    serves.  The error once ended the replacing, and with it every call of the route."""
    env = injected(tmp_path, """
        import errno, subprocess

        _Popen, _made = subprocess.Popen, []

        class _Refusing(_Popen):
            def __init__(self, args, *rest, **options):
                if "bridge.workers.child" in [str(a) for a in args]:
                    _made.append(1)
                    if len(_made) == 2:
                        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
                super().__init__(args, *rest, **options)

        subprocess.Popen = _Refusing
    """)
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly"}], workers={"processes": 1}, env=env)
    os.kill(_children(bridge.proc.pid)[0], signal.SIGKILL)
    bridge.wait_for_log("cannot be started: [Errno 11] Resource temporarily unavailable; trying again")
    assert rr(broker.port, f"{t}/deadly", "fine", wait=15)["status_code"] == 200


def test_replacements_that_die_while_starting_are_replaced_until_one_lives(make_bridge, broker, topic_prefix,
                                                                           tmp_path):
    """While the bridge serves, replacement workers die at start six times in a row (a full
    disk, a broken library for a moment; here a flag file they check).  The bridge keeps
    trying, slower and slower, and serves once the cause is gone.  After five such deaths it
    once gave up on that worker for good."""
    flag = tmp_path / "die-at-start"
    env = injected(tmp_path, f"""
        import os, sys

        if "bridge.workers.child" in sys.orig_argv and os.path.exists({str(flag)!r}):
            with open({str(flag)!r}, "a") as f:
                f.write("x")
            os._exit(3)
    """)
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/deadly", "handler": "deadly"}], workers={"processes": 1}, env=env)
    flag.write_text("")
    os.kill(_children(bridge.proc.pid)[0], signal.SIGKILL)
    wait_for(lambda: len(flag.read_text()) >= 6, 30, "six replacements dead at start")
    flag.unlink()
    assert rr(broker.port, f"{t}/deadly", "fine", wait=20)["status_code"] == 200
