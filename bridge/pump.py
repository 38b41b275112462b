"""Reading and writing one MQTT client's socket on the asyncio loop.

The MQTT client (paho, in :mod:`bridge.transport`) never touches the socket by itself: it is
told when the socket is readable, asked to write when it has something queued, and ticked once
a second for keepalive.  This module holds that plumbing and the one rule of backpressure:
reading stops at once when asked (also in the middle of a burst of packets, and while SUBACKs
are pending: they are read when reading resumes), except before the CONNACK, which is always read.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Protocol

READ_BURST = 64  # packets read per socket wake-up at most, so writes and timers still run


class PacketClient(Protocol):
    """What the pump needs from the MQTT client (bridge.transport._Client)."""

    def socket(self) -> Any: ...
    def read_packet(self) -> bool: ...  # read one packet; False when nothing more can be read now
    def pending(self) -> bool: ...  # bytes read (or decrypted) that the selector cannot see
    def want_write(self) -> bool: ...
    def loop_write(self) -> Any: ...
    def loop_misc(self) -> Any: ...


class Pump:
    """Event-loop I/O for one client; ``client`` may be replaced between connections."""

    def __init__(self, client: PacketClient, on_read_done: Callable[[], None] | None = None) -> None:
        self.client = client
        self._read_done = on_read_done  # after each burst of packets read: e.g. hand work on at once
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_read = 0.0  # monotonic time of the last read from the broker
        self._want_reading = True
        self._reader_on = False
        self._connack_seen = False  # reading may pause only once the CONNACK is read
        self._writer_armed = False
        self._flush_scheduled = False
        self._misc_timer: asyncio.TimerHandle | None = None

    # -- reading ------------------------------------------------------------------------------
    def opened(self, sock: Any) -> None:
        assert self.loop is not None
        self._connack_seen = False
        self.loop.add_reader(sock, self._read)  # always: the CONNACK must be read
        self._reader_on = True

    def connack(self, seen: bool) -> None:
        """The CONNACK was read (True), or the connection is gone (False)."""
        self._connack_seen = seen
        if seen:
            self._apply_reading()

    def set_reading(self, on: bool) -> None:
        """Read from the broker, or leave what it sends in TCP and the broker, at once."""
        self._want_reading = on
        self._apply_reading()

    def _apply_reading(self) -> None:
        on = self._want_reading or not self._connack_seen
        sock = self.client.socket()
        if on == self._reader_on or sock is None or self.loop is None:
            return
        if on:
            self.loop.add_reader(sock, self._read)
            if self.client.pending():
                self.loop.call_soon(self._read)  # bytes already read, which the selector cannot see
        else:
            self.loop.remove_reader(sock)
        self._reader_on = on

    def closed(self, sock: Any) -> None:
        assert self.loop is not None
        self.loop.remove_reader(sock)
        self._reader_on = False
        if self._writer_armed:
            self.loop.remove_writer(sock)
            self._writer_armed = False
        if self._misc_timer is not None:
            self._misc_timer.cancel()

    def _read(self) -> None:
        if not self._reader_on:
            return  # paused since this read was scheduled (bytes the selector cannot see)
        try:
            self._read_burst()
        finally:
            if self._read_done is not None:
                self._read_done()

    def _read_burst(self) -> None:
        client = self.client
        self.last_read = time.monotonic()
        # One packet at a time, checking after each whether reading must stop (a callback may
        # have paused it); a burst saves a loop iteration per message.
        for _ in range(READ_BURST):
            if not client.read_packet() or client.socket() is None or not self._reader_on:
                return
        if client.pending() and self.loop is not None:
            # The burst ended with bytes already read (or decrypted by TLS): the selector
            # cannot see those, so read on at the next loop iteration.
            self.loop.call_soon(self._read)

    # -- writing ------------------------------------------------------------------------------
    def register_write(self) -> None:
        # Coalesce: many publishes in one loop iteration share one write.
        if not (self._writer_armed or self._flush_scheduled) and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def unregister_write(self, sock: Any) -> None:
        if self._writer_armed and self.loop is not None:
            self.loop.remove_writer(sock)
            self._writer_armed = False

    def flush(self) -> None:
        """Write what is queued now rather than at the next loop iteration (saves latency)."""
        if self._flush_scheduled:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        client = self.client
        sock = client.socket()
        if sock is None or self._writer_armed or not client.want_write():
            return
        self._writer_armed = True  # inside loop_write, register_write must not reschedule
        client.loop_write()
        if client.want_write() and client.socket() is sock:
            assert self.loop is not None
            self.loop.add_writer(sock, self._flush_writable)  # the socket buffer is full
        else:
            self._writer_armed = False

    def _flush_writable(self) -> None:
        self.client.loop_write()  # unregister_write removes the writer once drained

    # -- keepalive ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Keepalive pings, and a dead connection is noticed; once a second while connected."""
        assert self.loop is not None
        if self.client.socket() is None:
            return
        self.client.loop_misc()
        self._misc_timer = self.loop.call_later(1.0, self.tick)

    def stop(self) -> None:
        if self._misc_timer is not None:
            self._misc_timer.cancel()
