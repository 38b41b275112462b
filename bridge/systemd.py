"""systemd service notifications (``Type=notify``) and the service watchdog, without libsystemd.

The protocol is one ``AF_UNIX`` datagram per notification, sent to the socket named by
``$NOTIFY_SOCKET``, holding newline-separated ``KEY=VALUE`` assignments (see sd_notify(3)).
A name starting with ``@`` is in the abstract namespace.  With no ``$NOTIFY_SOCKET`` (not
started by systemd, or not ``Type=notify``) every call here is a no-op.

Notifications are best effort: a failed send is logged once and otherwise ignored, because a
bridge that serves but cannot report to systemd is better than one that crashes over it.

The watchdog ping (``WATCHDOG=1``) is scheduled on the bridge's own event loop, every half of
``$WATCHDOG_USEC``.  That is the point of it: a function or a bug that blocks the loop also
stops the pings, so systemd notices within ``WatchdogSec=`` and restarts the service, while a
thread or timer of its own would keep pinging for a loop that no longer serves anything.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .environment import Environment, environment

log = logging.getLogger("bridge.systemd")


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or ``None`` if it is unusable.

    ``/path`` is a socket file; ``@name`` is ``name`` in the abstract namespace (leading NUL).
    Other forms (e.g. ``vsock:`` addresses used for virtual machines) are not supported.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def _one_line(text: str) -> str:
    # A newline would end the assignment and start another one of the text's choosing.
    return " ".join(text.splitlines())


class Notifier:
    """Sends notifications to the service manager; every method is safe to call when disabled.

    ``address`` is a ``$NOTIFY_SOCKET`` value; ``watchdog_usec`` is ``$WATCHDOG_USEC``
    (``WatchdogSec=`` in microseconds).  Methods return whether the datagram was sent.
    """

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._target = socket_address(address) if address else None
        if address and self._target is None:
            log.warning("NOTIFY_SOCKET=%r is not a socket path or @abstract name; "
                        "systemd will not be notified", address)
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failure_logged = False
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    def from_environment(cls, env: Environment | None = None) -> "Notifier":
        """A notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (read via :func:`environment`)."""
        env = env or environment()
        return cls(env.notify_socket, env.watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._target is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WatchdogSec=``), or ``None`` when off."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    # -- sending ------------------------------------------------------------------------------
    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; ``False`` if disabled or it failed."""
        if self._target is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    # Non-blocking: the sender is the event loop, which must never wait on
                    # systemd; a full receive queue loses one datagram, not the loop.
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                self._sock.sendto(data, self._target)
                return True
            except OSError as exc:
                if not self._failure_logged:
                    self._failure_logged = True
                    log.warning("cannot notify systemd at %s: %s (later failures are not logged)",
                                self.address, exc)
                return False

    def _with_status(self, head: str, status: str | None) -> bool:
        return self.send(head, f"STATUS={_one_line(status)}") if status else self.send(head)

    def notify_ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete and the bridge serves."""
        return self._with_status("READY=1", status)

    def notify_status(self, status: str) -> bool:
        """``STATUS=``: a one-line state shown by ``systemctl status``."""
        return self.send(f"STATUS={_one_line(status)}")

    def notify_stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: a graceful shutdown has begun."""
        return self._with_status("STOPPING=1", status)

    def notify_reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1``: a configuration reload has begun; follow with :meth:`notify_ready`.

        ``MONOTONIC_USEC`` (``CLOCK_MONOTONIC``, which :func:`time.monotonic_ns` reads on Linux)
        lets systemd 253+ match the notification to its reload request (``Type=notify-reload``);
        older versions ignore it.
        """
        stamp = f"MONOTONIC_USEC={time.monotonic_ns() // 1000}"
        if status:
            return self.send("RELOADING=1", stamp, f"STATUS={_one_line(status)}")
        return self.send("RELOADING=1", stamp)

    @contextmanager
    def reloading(self, status: str | None = None, done: str | None = None) -> Iterator[None]:
        """``RELOADING=1`` on entry and ``READY=1`` on exit, also when the reload fails.

        systemd keeps the unit in the "reloading" state until ``READY=1`` arrives, so it is
        sent even after an exception (the bridge then still runs its previous configuration).
        """
        self.notify_reloading(status)
        try:
            yield
        finally:
            self.notify_ready(done)

    # -- watchdog -----------------------------------------------------------------------------
    def watchdog_ping(self) -> bool:
        """``WATCHDOG=1``: one sign of life."""
        return self.send("WATCHDOG=1")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Ping now and then every :attr:`watchdog_interval` seconds from ``loop``'s callbacks.

        Returns ``False`` (and does nothing) when the watchdog is off.  Must be called from the
        loop's thread; calling it again restarts the chain.
        """
        interval = self.watchdog_interval
        if interval is None:
            return False
        loop = loop or asyncio.get_running_loop()
        self.stop_watchdog()
        log.debug("systemd watchdog: pinging every %g s", interval)

        def tick() -> None:
            # Runs only when the loop gets to it: a blocked loop means no pings.
            self.watchdog_ping()
            self._watchdog = loop.call_later(interval, tick)

        tick()
        return True

    def stop_watchdog(self) -> None:
        """Stop pinging (from the loop's thread)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        """Stop the watchdog and close the socket; later sends open a new one."""
        self.stop_watchdog()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
