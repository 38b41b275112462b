"""The Ledger on its own (bridge.delivery): exact packet ids, no broker, no dispatcher.

After a resumed session brokers resend unacknowledged requests differently: mosquitto with
the same packet id and DUP set, aedes with the same id and no DUP, RabbitMQ with new ids.
Whatever they do, a request runs once, is answered once and acknowledged once, with the id
of the copy (the original's may name another message by then).
"""

from __future__ import annotations

import time

from bridge import delivery
from bridge.delivery import WINDOW_SLACK, Held, Ledger
from bridge.message import Inbound, Outbound
from tests.support.recorder import Recorder


class Books:
    """A ledger over a recording link, standing in for the dispatcher's side of it."""

    def __init__(self) -> None:
        self.link = Recorder()
        self.done: list[Held] = []
        self.ledger = Ledger(self.link, None, self.done.append)  # type: ignore[arg-type]
        self.ran: list[Inbound] = []  # requests the dispatcher would run

    def arrive(self, msg: Inbound) -> Held | None:
        """What the dispatcher does with a message: absorb a copy, else hold and run it."""
        if msg.qos and self.ledger.absorb(msg):
            return None
        held = Held(msg)
        self.ledger.hold(held)
        self.ran.append(msg)
        return held

    def answer(self, held: Held) -> None:
        self.ledger.send(held, Outbound("out", b"reply", 0))

    def drop(self) -> None:
        self.link.can_ack = False

    def resume(self, last_read: float | None = None) -> None:
        self.link.can_ack = True
        self.ledger.session_resumed(last_read)


def req(mid: int, payload: bytes = b"p", *, topic: str = "t/req", dup: bool = False, qos: int = 1,
        correlation: bytes | None = None, response_topic: str | None = None) -> Inbound:
    return Inbound(topic, payload, qos, mid, dup=dup, correlation_data=correlation, response_topic=response_topic)


def test_mosquitto_same_id_and_dup_while_running_is_acknowledged_once_when_done():
    b = Books()
    a = b.arrive(req(5, b"A"))
    b.drop()
    b.resume()
    assert b.arrive(req(5, b"A", dup=True)) is None  # the copy: not run
    assert b.link.acked == []
    b.answer(a)
    assert b.link.acked == [5] and len(b.ran) == 1 and len(b.link.published) == 1


def test_aedes_same_id_without_dup_is_still_a_copy():
    b = Books()
    a = b.arrive(req(7, b"A"))
    b.drop()
    b.answer(a)  # finished while the connection was down: the ack waits
    assert b.link.acked == []
    b.resume()
    assert b.arrive(req(7, b"A", dup=False)) is None
    assert b.link.acked == [7] and len(b.ran) == 1


def test_rabbitmq_new_id_after_the_work_finished_acknowledges_the_new_id_only():
    b = Books()
    a = b.arrive(req(3, b"A"))
    b.drop()
    b.answer(a)
    b.resume()
    assert b.arrive(req(41, b"A", dup=True)) is None
    assert b.link.acked == [41]  # never 3: that id belongs to the old connection
    assert len(b.ran) == 1 and len(b.link.published) == 1


def test_rabbitmq_new_id_while_running_is_acknowledged_when_the_work_is_done():
    b = Books()
    a = b.arrive(req(3, b"A"))
    b.drop()
    b.resume()
    assert b.arrive(req(9, b"A")) is None
    b.answer(a)
    assert b.link.acked == [9] and len(b.ran) == 1


def test_new_ids_that_collide_with_old_ones_go_to_the_right_requests():
    """RabbitMQ numbers the resent requests afresh: B's copy gets A's old id and A's copy a new one."""
    b = Books()
    a, bb = b.arrive(req(1, b"A")), b.arrive(req(2, b"B"))
    b.drop()
    b.resume()
    assert b.arrive(req(1, b"B")) is None  # B's copy, with the id A had
    assert b.arrive(req(2, b"A")) is None  # A's copy, with the id B had
    b.answer(a)
    assert b.link.acked == [2]
    b.answer(bb)
    assert b.link.acked == [2, 1]
    assert [m.payload for m in b.ran] == [b"A", b"B"]


def test_a_new_request_taking_an_old_id_runs_and_the_old_work_acknowledges_its_copy():
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.drop()
    b.resume()
    new = b.arrive(req(1, b"N"))  # a new request with A's old id
    assert new is not None
    assert b.arrive(req(8, b"A")) is None  # then A's copy
    b.answer(a)
    b.answer(new)
    assert b.link.acked == [8, 1]
    assert [m.payload for m in b.ran] == [b"A", b"N"]


def test_an_acknowledgement_lost_in_the_drop_is_sent_again_for_the_copy_without_running_it():
    b = Books()
    a = b.arrive(req(4, b"A"))
    b.answer(a)  # acknowledged (4) just before the connection dropped under it
    assert b.link.acked == [4]
    b.drop()
    b.resume()  # the broker never got the ack, so it resends A
    assert b.arrive(req(4, b"A", dup=True)) is None
    assert b.link.acked == [4, 4] and len(b.ran) == 1 and len(b.link.published) == 1


def test_acknowledgements_older_than_the_last_read_are_not_expected_again():
    b = Books()
    a = b.arrive(req(4, b"A"))
    b.answer(a)
    b.drop()
    b.resume(last_read=time.monotonic() + 60)  # the broker was heard from long after that ack
    assert b.arrive(req(12, b"A")) is not None  # a new, identical request: it runs


def test_copy_recognition_compares_correlation_data_and_response_topic():
    b = Books()
    a = b.arrive(req(1, b"same", correlation=b"c1", response_topic="replies/x"))
    b.drop()
    b.resume()
    other = b.arrive(req(2, b"same", correlation=b"c2", response_topic="replies/x"))
    assert other is not None  # another request with the same payload: it runs
    assert b.arrive(req(3, b"same", correlation=b"c1", response_topic="replies/x")) is None
    b.answer(a)
    b.answer(other)
    assert sorted(b.link.acked) == [2, 3]


def test_large_payloads_are_recognised_too():
    big = bytes(range(256)) * 1024  # 256 KiB: remembered by digest
    b = Books()
    a = b.arrive(req(1, big))
    b.answer(a)
    h = b.arrive(req(2, big + b"x"))
    b.drop()
    b.resume()
    assert b.arrive(req(1, big)) is None  # the copy of the acknowledged one
    assert b.arrive(req(30, big + b"x")) is None  # the copy of the running one
    b.answer(h)
    assert b.link.acked == [1, 1, 30]


def test_the_one_limit_an_identical_new_request_inside_the_window_is_taken_for_the_copy():
    """Documented in docs/reliability.md: inside the resume window two identical requests
    cannot be told apart; the second is acknowledged as the copy of the first."""
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.drop()
    b.resume()
    assert b.arrive(req(2, b"A")) is None  # in truth a second, identical request
    b.answer(a)
    assert b.link.acked == [2] and len(b.ran) == 1


def test_after_the_window_an_identical_request_runs(monkeypatch):
    monkeypatch.setattr(delivery, "ACKED_WINDOW", 0.0)  # the few seconds have passed
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.drop()
    b.resume()
    assert b.arrive(req(1, b"A", dup=True)) is None  # every copy came: the window closes
    b.answer(a)
    time.sleep(0.01)
    assert b.arrive(req(2, b"A")) is not None
    assert len(b.ran) == 2


def test_a_copy_of_an_acknowledged_request_may_come_after_new_messages():
    """aedes mixes new messages in before it resends what it had in flight."""
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.answer(a)
    b.drop()
    b.resume()
    assert b.arrive(req(2, b"N")) is not None  # new
    assert b.arrive(req(1, b"A")) is None  # then the copy of A, whose ack was lost
    assert len(b.ran) == 2


def test_acknowledged_requests_are_no_longer_expected_after_a_few_seconds(monkeypatch):
    monkeypatch.setattr(delivery, "ACKED_WINDOW", 0.0)
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.answer(a)
    b.drop()
    b.resume()
    time.sleep(0.01)
    assert b.arrive(req(3, b"A")) is not None  # its acknowledgement had arrived: a new request


def test_a_broker_that_never_resends_gets_no_ack_for_old_ids():
    """amqtt does not resend unacknowledged requests after a resume: the held ones are answered
    once; after WINDOW_SLACK new messages their old ids (which may name other messages by then)
    are never acknowledged."""
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.drop()
    b.resume()
    news = [b.arrive(req(100 + i, f"n{i}".encode())) for i in range(WINDOW_SLACK + 1)]
    assert all(n is not None for n in news)
    b.answer(a)
    for n in news:
        b.answer(n)  # type: ignore[arg-type]
    assert 1 not in b.link.acked
    assert len(b.link.published) == WINDOW_SLACK + 2


def test_a_second_drop_inside_the_window_keeps_waiting_for_the_copy():
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.drop()
    b.resume()
    b.drop()  # dropped again before the copy came
    b.answer(a)
    b.resume()
    assert b.arrive(req(77, b"A")) is None
    assert b.link.acked == [77] and len(b.ran) == 1


def test_a_lost_session_means_no_copies_and_no_acks_for_old_ids():
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.drop()
    b.link.can_ack = True
    b.ledger.session_lost()
    b.answer(a)
    assert b.link.acked == [] and len(b.link.published) == 1
    assert b.arrive(req(1, b"A")) is not None  # a new message: the broker forgot the old one


def test_qos2_requests_are_not_expected_again_and_complete_at_the_resume():
    b = Books()
    a = b.arrive(req(6, b"A", qos=2))
    b.drop()
    b.answer(a)
    b.resume()
    assert b.link.acked == [6]  # completed at once: the broker resends only PUBREL, never a copy


def test_without_a_resume_a_different_message_with_a_held_id_orphans_the_old_work():
    """A broker restarted from an older snapshot reuses the id of running work for a new message."""
    b = Books()
    a = b.arrive(req(2, b"A"))
    new = b.arrive(req(2, b"B"))
    assert new is not None
    b.answer(a)
    b.answer(new)
    assert b.link.acked == [2]  # B's, once; A never acknowledges an id that is B's now


def test_each_done_request_is_released_once():
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.drop()
    b.answer(a)
    b.resume()
    b.arrive(req(50, b"A"))
    assert b.done == [a]


def test_the_same_message_twice_right_after_a_resume_runs_once():
    """aedes has been seen sending a message twice, same packet id, no DUP, right after a resume."""
    b = Books()
    a = b.arrive(req(1, b"A"))
    b.answer(a)
    b.drop()
    b.resume()
    n = b.arrive(req(9, b"N"))
    assert n is not None
    assert b.arrive(req(9, b"N")) is None
    b.answer(n)
    assert b.link.acked == [1, 9] and len(b.ran) == 2


def test_a_message_delivered_again_after_it_was_acknowledged_in_the_window_runs_once():
    """aedes again: right after a resume, a message answered and acknowledged comes once more."""
    b = Books()
    b.drop()
    b.resume()
    n = b.arrive(req(6505, b"N"))
    b.answer(n)  # type: ignore[arg-type]
    assert b.arrive(req(6505, b"N")) is None
    assert b.link.acked == [6505, 6505] and len(b.ran) == 1
