"""A worker process's threads, and its end of the socket to the daemon.

The thread that reads a batch of frames from the socket runs its calls itself, one after the
other, and goes back to reading when the batch is done: no other thread is woken per call, so a
call costs no futex wake-up, context switch or GIL hand-over, and the results of a batch go out
in one write.

A *watcher* thread makes sure a slow call never holds others up.  While the worker is busy it
looks every :data:`TICK` (2 ms).  When no call has started since its last look, it wakes (or
starts) a crew thread for each frame waiting in the queue, and one to read the socket if nobody
has read it since; while calls do keep starting, it adds one thread per look as long as frames
have waited in the queue since the previous one.  It also writes results that have waited
since its last look.  So a call that arrives behind a slow one starts, and a finished call's
result leaves, at most about two ticks late (~4 ms, plus a thread wake-up; when the slow call
is pure Python holding the GIL, add up to one switch interval, 5 ms, per hand-over).  Calls
that block (sleep, I/O) still run side by side: with ``concurrency`` 4, four blocking calls
run at once within a few ms.

Idle, nothing polls: after :data:`LINGER` without a frame the watcher sleeps until the next
frame arrives (the reader wakes it then, one futex call; while it is awake, a frame costs the
reader no system call besides its ``recv``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

from . import wire

TICK = 0.002  # how often the watcher looks while the worker is busy
# How long it keeps looking after the last frame before it sleeps: above ~10 frames/s it never
# sleeps (no wake-up per frame); a quiet spell costs LINGER / TICK looks, a few µs each.
LINGER = 0.1


class Channel:
    """This worker's end of the socket: reads by one thread at a time, combined writes.

    Results are written by the thread that made them, unless that thread *holds* the channel (it
    runs a batch): then they wait for its :meth:`release`, another thread's write or the
    watcher's :meth:`flush`, and go out together.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._out: list[bytes] = []
        self._sending = False
        self._holders: set[int] = set()  # threads whose results wait for their release()
        self.appended = 0  # frames given to send(), ever
        self.taken = 0  # of those, how many a write has taken
        self._calls = 0  # "call" frames read
        self._results = 0  # "result" frames sent

    def send(self, *items: Any) -> None:
        """Send a frame; frames queued while another thread writes go out with its next write."""
        data = wire.frame(*items)
        with self._lock:
            self._out.append(data)
            self.appended += 1
            if items[0] == "result":
                self._results += 1
            if self._sending or (self._holders and threading.get_ident() in self._holders):
                return  # the thread writing now, or this thread's release(), takes it
            self._sending = True
        self._write()

    def hold(self) -> None:
        """Keep what this thread sends until it calls :meth:`release` (never block while holding)."""
        with self._lock:
            self._holders.add(threading.get_ident())

    def release(self) -> None:
        with self._lock:
            self._holders.discard(threading.get_ident())
            if self._sending or not self._out:
                return
            self._sending = True
        self._write()

    def flush(self) -> None:
        """Write what waits now, held or not."""
        with self._lock:
            if self._sending or not self._out:
                return
            self._sending = True
        self._write()

    @property
    def pending(self) -> bool:
        """Frames not yet written (held, queued or being written)."""
        return bool(self._out) or self._sending

    @property
    def unanswered(self) -> int:
        """Calls read whose result was not sent yet: also those read but not yet started,
        which no count of running calls sees."""
        with self._lock:
            return self._calls - self._results

    def _write(self) -> None:
        while True:
            with self._lock:
                if not self._out:
                    self._sending = False
                    return
                chunk = b"".join(self._out)
                self._out.clear()
                self.taken = self.appended
            try:
                self._sock.sendall(chunk)
            except OSError:
                os._exit(0)  # the daemon has gone: nobody waits for these results

    def receive(self) -> list[tuple[Any, ...]] | None:
        """The next frames from the daemon (blocking); None when it has gone."""
        while True:
            frames = wire.split(self._buffer, safe=False)
            if frames:
                calls = sum(1 for f in frames if f[0] == "call")
                with self._lock:
                    self._calls += calls
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
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # idle threads wait here for the watcher
        self._queue: deque[tuple[Any, ...]] = deque()
        self._reading = False
        self._idle = 0  # threads waiting on the condition, not yet woken
        self._coming = 0  # threads woken or started, not yet back in _next
        self._threads = 0
        # Counters the watcher compares between looks.
        self._reads = 0  # batches read (the first frame of each is a call started)
        self._queued = 0  # frames put in the queue
        self._taken = 0  # frames taken from the queue
        self._asleep = False
        self._alarm = threading.Lock()  # released to wake the sleeping watcher
        self._alarm.acquire()

    def start(self) -> None:
        with self._lock:
            self._call(1)
        threading.Thread(target=self._watch, name="crew-watch", daemon=True).start()

    def _serve(self) -> None:
        with self._lock:
            self._coming -= 1
        held = False
        while True:
            frame, batch = self._next(held)
            if frame is None:  # nothing to take: write the batch's results before blocking
                if held:
                    self._channel.release()
                    held = False
                continue
            if batch:
                self._channel.hold()
                held = True
            self._handle(frame)

    def _next(self, held: bool) -> tuple[tuple[Any, ...] | None, bool]:
        """A queued frame, or the first of a batch this thread read (and whether more came);
        ``(None, False)`` when it must look again (woken, or it holds the channel)."""
        with self._lock:
            if self._queue:
                self._taken += 1
                return self._queue.popleft(), False
            if held:
                return None, False
            if self._reading:
                self._idle += 1
                self._cond.wait()  # the watcher counted this thread out of _idle
                self._coming -= 1
                return None, False
            self._reading = True
        frames = self._channel.receive()  # no lock held: the others may take the queue
        if frames is None:
            os._exit(0)  # the daemon has gone
        with self._lock:
            self._reading = False
            self._reads += 1
            if len(frames) > 1:
                self._queue.extend(frames[1:])
                self._queued += len(frames) - 1
            if self._asleep:
                self._asleep = False
                self._alarm.release()
        return frames[0], len(frames) > 1

    def _call(self, wanted: int) -> None:
        """Wake or start ``wanted`` threads (with the lock held)."""
        woken = min(wanted, self._idle)
        if woken:
            self._idle -= woken
            self._cond.notify(woken)
        started = min(wanted - woken, self._size - self._threads)
        for _ in range(started):
            self._threads += 1
            threading.Thread(target=self._serve, name=f"crew-{self._threads}", daemon=True).start()
        self._coming += woken + started

    def _watch(self) -> None:
        channel = self._channel
        seen_calls = seen_queued = seen_out = 0
        quiet = 0
        while True:
            time.sleep(TICK)
            with self._lock:
                calls = self._reads + self._taken
                stuck = calls == seen_calls  # no call started since the last look
                waiting = seen_queued - self._taken  # frames queued then and still queued now
                wanted = 0
                if waiting > 0:
                    wanted = len(self._queue) if stuck else 1
                if stuck and not self._reading:
                    wanted += 1  # nobody has read the socket for a whole tick
                wanted -= self._coming
                if wanted > 0:
                    self._call(wanted)
                seen_calls, seen_queued = calls, self._queued
                quiet = quiet + 1 if stuck and self._reading and not self._queue else 0
                sleep = quiet * TICK >= LINGER and not channel.pending
                if sleep:
                    self._asleep = True
            if channel.taken < seen_out:
                channel.flush()  # results made before the last look and still unwritten
            seen_out = channel.appended
            if sleep:
                self._alarm.acquire()  # until the reader gets the next frames
                quiet = 0
