"""One worker process seen from the daemon: spawn it, exchange frames, notice how it ended.

Everything here runs on the daemon's event loop.  The socket is non-blocking and read with
``add_reader``; frames to the worker are buffered and written once per loop iteration.  The
process's end is noticed through a pidfd, so its exit status (or the signal that killed it) is
known at once, and what it wrote just before dying is still read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Callable

from ..config import BridgeConfig
from . import wire

log = logging.getLogger("bridge.workers")

RECV_CHUNK = 64 * 1024  # under malloc's mmap threshold: no mmap/munmap per read
FrameHandler = Callable[["WorkerProcess", tuple[Any, ...]], None]
ExitHandler = Callable[["WorkerProcess", str], None]


def describe_exit(returncode: int) -> str:
    """``exited with status 7``, ``was killed by signal 11 (SIGSEGV)``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


class WorkerProcess:
    """A child running ``python -m bridge.workers.child``, driven from the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, on_frame: FrameHandler,
                 on_exit: ExitHandler, after_frames: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.name = name
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._after_frames = after_frames  # once per batch read: e.g. write the replies out
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._pidfd = -1
        self._in = bytearray()
        self._out = bytearray()
        self._flush_scheduled = False
        self._writer_on = False
        self.loading: str | None = None  # the module it was importing (blamed if it dies)
        self.calls: dict[int, Any] = {}  # call id -> the dispatcher's job
        self.state = "starting"  # starting -> ready -> retiring -> gone
        self.exit_reason = ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def spawn(self, config: BridgeConfig, specs: list[str], excluded: dict[str, str], hostname: str,
              check_only: bool = False) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.workers.child", str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()  # no process (out of memory, of process ids): nothing leaks
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self._pidfd = os.pidfd_open(self.proc.pid)
        self.loop.add_reader(self._pidfd, self._exited)
        self.loop.add_reader(parent, self._readable)
        self.send("start", config, specs, excluded, hostname, check_only)

    # -- frames -------------------------------------------------------------------------------
    def send(self, *items: Any) -> None:
        if self._sock is None:
            return
        self._out += wire.frame(*items)
        if not self._flush_scheduled and not self._writer_on:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is buffered now (one system call for everything queued)."""
        self._flush_scheduled = False
        sock = self._sock
        if sock is None or not self._out or self._writer_on:
            return
        try:
            sent = sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._out.clear()  # the worker is gone; its exit is noticed through the pidfd
            return
        del self._out[:sent]
        if self._out:
            self._writer_on = True
            self.loop.add_writer(sock, self._writable)

    def _writable(self) -> None:
        assert self._sock is not None
        self.loop.remove_writer(self._sock)
        self._writer_on = False
        self.flush()

    def _readable(self) -> None:
        if self._read() == "eof" and self._sock is not None:
            self.loop.remove_reader(self._sock)  # the pidfd tells how it ended

    def _read(self) -> str:
        sock = self._sock
        if sock is None:
            return "eof"
        state = "ok"
        while True:
            try:
                chunk = sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                state = "eof"
                break
            if not chunk:
                state = "eof"
                break
            self._in += chunk
            if len(chunk) < RECV_CHUNK:
                break  # drained: the selector says when more comes (no recv just to hear EAGAIN)
        try:
            frames = wire.split(self._in, safe=True)
        except wire.WireError as exc:
            log.error("worker %s (pid %d) sent an unreadable frame (%s); it is stopped", self.name, self.pid, exc)
            self.kill()
            return "eof"
        for item in frames:
            self._on_frame(self, item)
        if frames and self._after_frames is not None:
            self._after_frames()
        return state

    # -- the end ------------------------------------------------------------------------------
    def _exited(self) -> None:
        self._read()  # results written just before the end still count
        self._close_fds()
        assert self.proc is not None
        returncode = self.proc.wait()
        self.exit_reason = describe_exit(returncode)
        try:
            self._on_exit(self, self.exit_reason)  # it still sees the state the worker was in
        finally:
            self.state = "gone"

    def _close_fds(self) -> None:
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._sock is not None:
            self.loop.remove_reader(self._sock)
            if self._writer_on:
                self.loop.remove_writer(self._sock)
            self._sock.close()
            self._sock = None

    def kill(self) -> None:
        """SIGKILL: its calls cannot be stopped any other way (a thread spinning in a function)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def stop(self) -> None:
        """Ask it to finish what runs and exit."""
        if self.state != "gone":
            self.send("stop")
