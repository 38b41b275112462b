"""Dispatcher bookkeeping that needs exact control of packet ids (no broker)."""

from __future__ import annotations

import asyncio

from bridge.config import parse_config
from bridge.dispatch import Dispatcher
from bridge.message import Inbound
from tests.conftest import TEST_HANDLERS
from tests.support import dispatching
from tests.support.recorder import Recorder


def test_work_from_a_lost_session_never_acknowledges_its_old_packet_id():
    config = parse_config({"handlers_dir": str(TEST_HANDLERS),
                           "routes": [{"topic": "w", "handler": "slow_async", "reply_topic": "out/w"}]}, TEST_HANDLERS)

    async def scenario() -> tuple[Recorder, list[int]]:
        recorder = Recorder()
        dispatcher = dispatching.dispatcher(config, recorder)
        dispatcher.handle(Inbound("w", b"0.1", qos=1, mid=1))  # A, running
        dispatcher.lanes[0].ledger.session_lost()  # the broker came back without the session
        dispatcher.handle(Inbound("w", b"0.5", qos=1, mid=1))  # B: a new message, the same id
        async with asyncio.timeout(5):
            while not recorder.published:  # until A has answered (B sleeps longer)
                await asyncio.sleep(0.01)
        acked_while_b_runs = list(recorder.acked)
        assert await dispatcher.drain(5)
        return recorder, acked_while_b_runs

    recorder, acked_while_b_runs = asyncio.run(scenario())
    assert acked_while_b_runs == []  # A must not acknowledge B's id
    assert recorder.acked == [1]  # B acknowledges once, when it is done
    assert [o.payload.count(b"slept") for o in recorder.published] == [1, 1]  # both answered


SLOW = parse_config({"handlers_dir": str(TEST_HANDLERS),
                     "routes": [{"topic": "w", "handler": "slow_async", "reply_topic": "out/w"}]}, TEST_HANDLERS)


def test_a_request_finished_while_the_request_connection_is_down_is_acknowledged_on_redelivery():
    """Its reply went out on the reply connection; the ack waits for the resumed session."""

    async def scenario() -> tuple[Recorder, list[int]]:
        recorder = Recorder()
        dispatcher = dispatching.dispatcher(SLOW, recorder)
        recorder.can_ack = False  # the request connection dropped
        dispatcher.handle(Inbound("w", b"0", qos=1, mid=7))
        assert await dispatcher.drain(5)  # answered, so it no longer counts as in flight
        acked_while_down = list(recorder.acked)
        recorder.can_ack = True
        dispatcher.handle(Inbound("w", b"0", qos=1, mid=7, dup=True))  # the broker redelivers it
        assert await dispatcher.drain(5)
        return recorder, acked_while_down

    recorder, acked_while_down = asyncio.run(scenario())
    assert acked_while_down == []  # an ack on a dead connection would be lost
    assert recorder.acked == [7]  # acknowledged once, on the redelivery
    assert len(recorder.published) == 1  # and the function did not run again


def test_replies_made_while_the_reply_connection_is_down_go_out_when_it_is_back():
    async def scenario() -> tuple[Recorder, int, list[int]]:
        recorder = Recorder()
        dispatcher = dispatching.dispatcher(SLOW, recorder)
        recorder.can_publish = False
        dispatcher.handle(Inbound("w", b"0", qos=1, mid=3))
        async with asyncio.timeout(5):
            while not dispatcher.lanes[0].ledger.parked:
                await asyncio.sleep(0.01)
        published_while_down, acked_while_down = len(recorder.published), list(recorder.acked)
        recorder.can_publish = True
        dispatcher.lanes[0].ledger.connected()  # the reply connection is back
        assert await dispatcher.drain(5)
        return recorder, published_while_down, acked_while_down

    recorder, published_while_down, acked_while_down = asyncio.run(scenario())
    assert (published_while_down, acked_while_down) == (0, [])  # nothing acknowledged unanswered
    assert len(recorder.published) == 1 and recorder.acked == [3]


def test_work_that_finishes_before_its_redelivered_copy_arrives_is_not_run_again():
    """After a resume the broker resends every unacknowledged request; a job that finishes
    before its copy is read must not acknowledge early, or the copy would look new."""

    async def scenario() -> tuple[Recorder, list[int]]:
        recorder = Recorder()
        dispatcher = dispatching.dispatcher(SLOW, recorder)
        dispatcher.handle(Inbound("w", b"0.05", qos=1, mid=9))  # running when the connection drops
        dispatcher.lanes[0].ledger.session_resumed()  # and it came back with the session
        assert await dispatcher.drain(5)  # finished and answered before the copy was read
        acked_before_copy = list(recorder.acked)
        dispatcher.handle(Inbound("w", b"0.05", qos=1, mid=9, dup=True))  # the broker's copy
        assert await dispatcher.drain(5)
        return recorder, acked_before_copy

    recorder, acked_before_copy = asyncio.run(scenario())
    assert acked_before_copy == []
    assert recorder.acked == [9]
    assert len(recorder.published) == 1  # ran once


def _dispatcher(recorder: Recorder, config=SLOW) -> Dispatcher:
    return dispatching.dispatcher(config, recorder)


def test_a_qos2_request_finished_while_disconnected_is_completed_when_the_session_resumes():
    """The broker resends only PUBREL for QoS 2, never the PUBLISH: no copy will come."""

    async def scenario() -> tuple[Recorder, list[int]]:
        recorder = Recorder()
        dispatcher = _dispatcher(recorder)
        recorder.can_ack = False
        dispatcher.handle(Inbound("w", b"0", qos=2, mid=4))
        dispatcher.handle(Inbound("w", b"0.05", qos=2, mid=5))  # still running at the resume
        async with asyncio.timeout(5):
            while not recorder.published:
                await asyncio.sleep(0.01)
        acked_while_down = list(recorder.acked)
        recorder.can_ack = True
        dispatcher.lanes[0].ledger.session_resumed()
        assert await dispatcher.drain(5)
        return recorder, acked_while_down

    recorder, acked_while_down = asyncio.run(scenario())
    assert acked_while_down == []
    assert recorder.acked == [4, 5]  # 4 at the resume, 5 when it finished
    assert len(recorder.published) == 2


def test_a_different_message_with_a_running_jobs_id_and_dup_set_is_not_taken_for_its_copy():
    async def scenario() -> Recorder:
        recorder = Recorder()
        dispatcher = _dispatcher(recorder)
        dispatcher.handle(Inbound("w", b"0.05", qos=1, mid=2))  # A
        dispatcher.lanes[0].ledger.session_resumed()
        dispatcher.handle(Inbound("w", b"0.01", qos=1, mid=2, dup=True))  # B: the broker lost A
        assert await dispatcher.drain(5)
        return recorder

    recorder = asyncio.run(scenario())
    assert sorted(o.payload.count(b"slept") for o in recorder.published) == [1, 1]  # both ran
    assert recorder.acked == [2]  # B's, once; A never acknowledges an id that is B's now


def test_messages_arriving_during_shutdown_are_left_to_the_broker():
    async def scenario() -> Recorder:
        recorder = Recorder()
        dispatcher = _dispatcher(recorder)
        dispatcher.stop_intake()
        dispatcher.handle(Inbound("w", b"0", qos=1, mid=6))
        assert await dispatcher.drain(1)
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.published == [] and recorder.acked == []  # redelivered at the next start


def test_a_stale_subscription_id_from_before_a_reload_does_not_pick_the_wrong_route():
    config = parse_config({"handlers_dir": str(TEST_HANDLERS), "routes": [
        {"topic": "b/#", "handler": "slow_async"}, {"topic": "a/#", "handler": "slow_async"}]}, TEST_HANDLERS)

    async def scenario() -> str | None:
        dispatcher = _dispatcher(Recorder(), config)
        # Queued when a/# was route 1; after the reload route 1 is b/#.
        route = dispatcher.route_for(Inbound("a/x", b"", subscription_ids=[1]))
        return route.config.topic if route else None

    assert asyncio.run(scenario()) == "a/#"


def test_shared_routes_are_found_by_subscription_id_and_by_their_topic_filter():
    config = parse_config({"handlers_dir": str(TEST_HANDLERS), "mqtt": {"share_group": "g"}, "routes": [
        {"topic": "b/#", "handler": "slow_async"}, {"topic": "$share/h/a/+", "handler": "slow_async"}]}, TEST_HANDLERS)

    async def scenario() -> list[str | None]:
        dispatcher = _dispatcher(Recorder(), config)
        found = [dispatcher.route_for(Inbound("a/x", b"", subscription_ids=[2])),  # MQTT 5
                 dispatcher.route_for(Inbound("a/x", b"")),  # MQTT 3.1.1: by matching
                 dispatcher.route_for(Inbound("b/y", b""))]
        return [r.config.topic if r else None for r in found]

    assert asyncio.run(scenario()) == ["$share/h/a/+", "$share/h/a/+", "b/#"]


def test_a_resent_pubrel_completes_finished_qos2_work_and_waits_for_running_work():
    async def scenario() -> tuple[list[int], list[int], Recorder]:
        recorder = Recorder()
        dispatcher = _dispatcher(recorder)
        dispatcher.lanes[0].ledger.released(11)  # finished before the drop; its PUBCOMP was lost
        after_finished = list(recorder.acked)
        dispatcher.handle(Inbound("w", b"0.05", qos=2, mid=12))
        dispatcher.lanes[0].ledger.released(12)  # still running: completed only when its reply is out
        after_running = list(recorder.acked)
        assert await dispatcher.drain(5)
        return after_finished, after_running, recorder

    after_finished, after_running, recorder = asyncio.run(scenario())
    assert after_finished == [11]
    assert after_running == [11]
    assert recorder.acked == [11, 12] and len(recorder.published) == 1


def test_a_request_answered_from_the_reply_store_leaves_nothing_in_flight(tmp_path):
    """Redelivered after a restart and answered with its stored reply: a clean shutdown later
    must not take it for unfinished work (the crash guard would count it as a death)."""
    from bridge.crashguard import CrashGuard
    from bridge.message import Outbound
    from bridge.replystore import ReplyStore, request_key

    msg = Inbound("w", b"0", qos=1, mid=8, dup=True)
    replies = ReplyStore(tmp_path / "replies.db", max_age=60)
    replies.save(request_key(msg), Outbound("out/w", b"stored", 1))
    guard = CrashGuard(tmp_path / "attempts.db", max_age=60)

    async def scenario() -> tuple[Recorder, bool]:
        recorder = Recorder()
        dispatcher = dispatching.dispatcher(SLOW, recorder, replies=replies, guard=guard)
        dispatcher.handle(msg)
        assert await dispatcher.drain(5)
        dispatcher.handle(Inbound("w", b"5", qos=1, mid=9))  # still running at shutdown
        return recorder, await dispatcher.drain(0.05)

    recorder, drained = asyncio.run(scenario())
    assert [o.payload for o in recorder.published] == [b"stored"] and recorder.acked == [8]
    assert not drained
    # Only the request still running at shutdown is spared; the stored-reply one is gone.
    assert guard._db.execute("select count(*) from attempts").fetchone() == (1,)
