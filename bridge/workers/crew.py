"""A worker process's threads, and its end of the socket to the daemon.

No thread hands a call to another: whichever thread is idle reads the socket (the *leader*),
wakes another to read next, and runs the first call it read itself, so a call runs on the
thread that received it.  Results are written by the thread that made them; when several are
ready at once, one write carries them all.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from typing import Any, Callable

from . import wire


class Channel:
    """This worker's end of the socket: reads by the leader thread, combined writes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._out: list[bytes] = []
        self._sending = False

    def send(self, *items: Any) -> None:
        """Send a frame; frames queued while another thread writes go out with its next write."""
        data = wire.frame(*items)
        with self._lock:
            self._out.append(data)
            if self._sending:
                return  # the thread writing now takes this one too
            self._sending = True
        while True:
            with self._lock:
                if not self._out:
                    self._sending = False
                    return
                chunk = b"".join(self._out)
                self._out.clear()
            try:
                self._sock.sendall(chunk)
            except OSError:
                os._exit(0)  # the daemon has gone: nobody waits for these results

    def receive(self) -> list[tuple[Any, ...]] | None:
        """The next frames from the daemon (blocking); None when it has gone."""
        while True:
            frames = wire.split(self._buffer, safe=False)
            if frames:
                return frames
            try:
                chunk = self._sock.recv(65536)  # under malloc's mmap threshold: no mmap per read
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk


class Crew:
    """Up to ``size`` threads serving frames from ``channel`` with ``handle(frame)``."""

    def __init__(self, channel: Channel, handle: Callable[[tuple[Any, ...]], None], size: int) -> None:
        self._channel = channel
        self._handle = handle
        self._size = max(size, 1) + 1  # one more, to read while every call slot runs
        self._cond = threading.Condition()
        self._queue: deque[tuple[Any, ...]] = deque()
        self._reading = False
        self._idle = 0
        self._threads = 0

    def start(self) -> None:
        with self._cond:
            self._spawn()

    def _spawn(self) -> None:
        self._threads += 1
        threading.Thread(target=self._serve, name=f"crew-{self._threads}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._handle(self._next())

    def _next(self) -> tuple[Any, ...]:
        with self._cond:
            self._idle += 1
            while not self._queue and self._reading:
                self._cond.wait()
            self._idle -= 1
            if self._queue:
                return self._queue.popleft()
            self._reading = True
        frames = self._channel.receive()  # no lock held: the others wait on the condition
        if frames is None:
            os._exit(0)  # the daemon has gone
        first, rest = frames[0], frames[1:]
        with self._cond:
            self._reading = False
            self._queue.extend(rest)
            wanted = len(rest) + 1  # one thread for each call left, one to read next
            woken = min(wanted, self._idle)
            if woken:
                self._cond.notify(woken)
            for _ in range(min(wanted - woken, self._size - self._threads)):
                self._spawn()
        return first
