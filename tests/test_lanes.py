"""A lane's share of the in-flight bounds (bridge.lanes), without a broker: each request
session is paused at its own share, so one route's flood stops only its own session."""

from __future__ import annotations

from bridge.lanes import Lane, Lanes
from tests.support.recorder import Recorder


class Session:
    def __init__(self) -> None:
        self.reading = True
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)

    @property
    def can_ack(self) -> bool:
        return True

    def pause(self) -> None:
        self.reading = False

    def resume(self) -> None:
        self.reading = True


def _lanes(count: int, max_in_flight: int, max_bytes: int = 1 << 30) -> list[tuple[Lane, Session]]:
    out = []
    for i in range(count):
        session = Session()
        lane = Lane.open(i, Recorder(), session, None, lambda held: None)
        lane.configure(count, i, max_in_flight, max_bytes)
        out.append((lane, session))
    return out


def test_a_full_lane_pauses_its_own_session_only():
    (flood, flood_session), (other, other_session) = _lanes(2, 8)
    for _ in range(4):
        flood.take(10)
    assert not flood_session.reading and other_session.reading
    other.take(10)
    assert other_session.reading  # one in flight of its share of 4


def test_a_paused_lane_resumes_when_there_is_room_and_never_when_closing():
    [(lane, session)] = _lanes(1, 8)
    for _ in range(8):
        lane.take(1)
    assert not session.reading
    lane.release(1, closing=False)
    assert session.reading
    lane.take(1)
    assert not session.reading
    lane.release(1, closing=True)
    assert not session.reading  # shutting down: intake stays stopped


def test_payload_bytes_pause_a_lane_before_its_count_does():
    [(lane, session)] = _lanes(1, 256, max_bytes=100)
    lane.take(60)
    assert session.reading
    lane.take(60)
    assert not session.reading
    lane.release(60, closing=False)
    assert session.reading


def test_the_share_of_a_closed_session_goes_to_the_others_and_frees_a_paused_one():
    lanes = Lanes(lane for lane, _ in _lanes(3, 9))
    lanes.share(9, 1 << 30)
    assert [lane.max for lane in lanes] == [3, 3, 3]
    first = lanes[0]
    for _ in range(3):
        first.take(1)
    assert first.paused
    lanes[2].serving = False  # drained and closed (bridge.link)
    lanes.share(9, 1 << 30)
    assert [lane.max for lane in lanes[:2]] == [5, 4] and not first.paused and first.session.reading  # type: ignore[attr-defined]
