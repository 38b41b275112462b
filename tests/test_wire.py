"""The frames between the daemon and its worker processes (bridge.workers.wire)."""

from __future__ import annotations

import os
import pickle

import pytest

from bridge.contract import Event, Response, error_body
from bridge.workers import wire


def test_an_event_crosses_to_a_worker_with_everything_a_function_reads():
    event = Event(b"\x00body", method="PUT", path="/a/b", topic="a/b", query="x=1&x=2&y=",
                  headers=[("X-Tag", "one"), ("x-tag", "two"), ("X-Topic", "a/b")])
    [(kind, again)] = wire.split(bytearray(wire.frame("call", event)), safe=False)
    assert kind == "call"
    assert (again.body, again.method, again.path, again.topic) == (b"\x00body", "PUT", "/a/b", "a/b")
    assert again.headers.getlist("X-TAG") == ["one", "two"]
    assert again.query.getlist("x") == ["1", "2"] and again.query["y"] == ""
    assert sorted(vars(again)) == sorted(vars(event))


def test_headers_a_function_already_read_cross_as_they_are():
    event = Event(b"", headers=[("A", "1")])
    event.headers.add("B", "2")  # built, then changed
    again = pickle.loads(pickle.dumps(event))
    assert list(again.headers.items()) == [("A", "1"), ("B", "2")]


def test_a_response_round_trips_through_plain_values():
    response = error_body(504, "function f timed out after 1 s", kind="Timeout", where="f.py:3")
    [(_, state)] = wire.split(bytearray(wire.frame("result", wire.pack_response(response))), safe=True)
    assert wire.unpack_response(state) == response


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_worker_cannot_make_the_daemon_run_code():
    with pytest.raises(wire.WireError, match="refused posix.system"):
        wire.split(bytearray(wire.frame("result", 1, Evil())), safe=True)


@pytest.mark.parametrize("state", [
    (200, [], "not bytes", "text/plain", False, None),
    ("200", [], b"", "text/plain", False, None),
    (200, [("A",)], b"", "text/plain", False, None),
    (200, [], b"", "text/plain", False, ("Timeout", 3, "")),
    (200, [], b""),
])
def test_a_malformed_response_from_a_worker_is_refused(state):
    with pytest.raises(wire.WireError):
        wire.unpack_response(state)


def test_a_frame_over_the_limit_is_refused_before_it_is_read():
    buffer = bytearray((wire.MAX_FRAME + 1).to_bytes(4, "big") + b"x")
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.split(buffer, safe=True)


def test_partial_frames_wait_for_the_rest():
    data = wire.frame("result", 1, wire.pack_response(Response(body=b"x" * 100)))
    buffer = bytearray(data[:50])
    assert wire.split(buffer, safe=True) == [] and len(buffer) == 50
    buffer += data[50:] + data
    assert len(wire.split(buffer, safe=True)) == 2 and buffer == bytearray()
