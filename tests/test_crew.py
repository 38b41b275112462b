"""A worker's end of its socket (bridge.workers.crew.Channel), on a real socket pair: a
stopping worker waits for every call it has read, also one no thread has started yet."""

from __future__ import annotations

import socket

from bridge.workers import wire
from bridge.workers.crew import Channel


def test_calls_read_count_as_unanswered_until_their_result_is_sent():
    daemon, worker = socket.socketpair()
    try:
        channel = Channel(worker)
        daemon.sendall(wire.frame("call", 1, "echo", None) + wire.frame("call", 2, "echo", None)
                       + wire.frame("stop"))
        frames = channel.receive()
        while frames is not None and len(frames) < 3:  # the three may come in two reads
            frames += channel.receive() or []
        assert [f[0] for f in frames] == ["call", "call", "stop"]
        assert channel.unanswered == 2  # neither started: a count of running calls says 0
        channel.send("result", 1, ())
        assert channel.unanswered == 1
        channel.send("loading", "x")  # not a result
        assert channel.unanswered == 1
        channel.send("result", 2, ())
        assert channel.unanswered == 0 and not channel.pending
    finally:
        daemon.close()
        worker.close()
