"""Reaching the broker: the socket, the protocol version, the reconnect backoff, client-id clashes.

Free of paho: :mod:`bridge.transport` hands paho a socket opened here, so connecting never
blocks the event loop (paho's own connect resolves and connects synchronously) and no probe
connection is made before the real one (it made amqtt log an ERROR and mosquitto a notice per
connect).

* :func:`open_socket` resolves, connects and does the TLS handshake on the loop.
* :class:`ProtocolChoice` is ``mqtt.protocol``: ``"auto"`` tries MQTT 5 and falls back to
  3.1.1 once, for both connections, when the broker refuses MQTT 5 or does not answer.
* :class:`Backoff` is the reconnect delay: it doubles after every failed attempt and after
  every connection that did not last (a broker that accepts then drops at once, or another
  client taking the session), and resets only after a connection that did.
* :class:`ClashWatch` recognises a second client with the same client id.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from typing import Literal, Protocol

log = logging.getLogger("bridge.transport")

CONNECT_TIMEOUT = 10.0  # seconds for TCP connect and TLS handshake
CONNACK_TIMEOUT = 5.0  # seconds a broker has to answer CONNECT (amqtt never answers an MQTT 5 one)
REFUSED = "broker refused the connection"  # how a refusing CONNACK is reported (Dialer.refusal)
STABLE_AFTER = 10.0  # a connection that lasted this long resets the backoff

V311_LOSSES = ("response topics (replies go to the route's reply_topic), user properties (no headers, "
               "method or query), content type, correlation data, subscription ids (routes are matched "
               "by topic), Receive Maximum and Maximum Packet Size (limits.max_in_flight and "
               "limits.max_payload are enforced by the bridge only)")


async def open_socket(host: str, port: int, context: ssl.SSLContext | None, *,
                      server_hostname: str | None = None, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, non-blocking socket (TLS-wrapped and handshaken when ``context`` is given)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:  # cancelled (shutdown) or timed out
                sock.close()
                raise
            if context is None:
                return sock
            return await _handshake(loop, context.wrap_socket(
                sock, server_hostname=server_hostname or host, do_handshake_on_connect=False))
        raise error or OSError(f"cannot resolve {host}")


async def _handshake(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket) -> ssl.SSLSocket:
    try:
        while True:
            try:
                sock.do_handshake()
                return sock
            except ssl.SSLWantReadError:
                await _ready(loop, sock, reading=True)
            except ssl.SSLWantWriteError:
                await _ready(loop, sock, reading=False)
    except BaseException:
        sock.close()
        raise


async def _ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, reading: bool) -> None:
    future: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    add, remove = (loop.add_reader, loop.remove_reader) if reading else (loop.add_writer, loop.remove_writer)
    add(fd, lambda: future.done() or future.set_result(None))
    try:
        await future
    finally:
        remove(fd)


class ProtocolChoice:
    """The MQTT version both connections use (``mqtt.protocol``), shared by them.

    ``"auto"`` starts with MQTT 5.  Until a broker has accepted a connection, a refusal of the
    version, a connection closed before CONNACK or no CONNACK within :data:`CONNACK_TIMEOUT`
    is followed at once by an attempt with MQTT 3.1.1 (and when that fails too, by MQTT 5 again
    after the backoff delay); the first version a broker accepts is kept.
    """

    def __init__(self, configured: Literal["auto", 5, 4]) -> None:
        self.configured = configured
        self.version: int = 5 if configured in ("auto", 5) else 4
        self.settled = configured != "auto"
        self._explained = False
        self._switched = False

    @property
    def v5(self) -> bool:
        return self.version == 5

    def accepted(self) -> None:
        """The broker accepted a connection with :attr:`version`: keep it."""
        if not self.settled:
            self.settled = True
            if self.version == 4 and not self._explained:
                self._explained = True
                log.warning("using MQTT 3.1.1 (mqtt.protocol = \"auto\"); under 3.1.1 the bridge has no %s",
                            V311_LOSSES)

    def rejected(self, name: str, why: str) -> bool:
        """The broker turned down :attr:`version` (``why``).  Return True when the next attempt
        should come at once with the other version (``auto``); otherwise the error is logged."""
        wanted = "MQTT 5" if self.v5 else "MQTT 3.1.1"
        if self.settled:
            if self.configured != "auto":
                other = 4 if self.v5 else 5
                log.error("%s connection: the broker refused %s (%s): it may not support that version; "
                          "set mqtt.protocol = \"auto\" (or %d)", name, wanted, why, other)
            return False
        if not self.v5:
            self.version = 5  # neither version got an answer: start again after the backoff delay
            return False
        self.version = 4
        if not self._switched:
            self._switched = True
            log.warning("%s connection: the broker did not accept %s (%s); trying MQTT 3.1.1", name, wanted, why)
        return True


class Backoff:
    """Capped exponential reconnect delay with ±20 % jitter."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum
        self._next = minimum

    def failed(self) -> float:
        """A failed attempt (or a connection that did not last): the delay to wait now."""
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.maximum)
        return delay

    def lasted(self, seconds: float) -> float:
        """A connection ended after ``seconds``: the delay before the next attempt."""
        if seconds >= STABLE_AFTER:
            self._next = self.minimum
        return self.failed()


class ClashWatch:
    """Recognises another client connected with our client id.

    MQTT 5 brokers close the older connection with reason 0x8E "Session taken over"; 3.1.1
    brokers just close it.  Two bridges with one ``mqtt.client_id`` then take the session from
    each other on every reconnect; :class:`Backoff` slows that down, this names the cause.
    """

    WINDOW = 120.0  # seconds in which repeated takeovers count as a clash
    SHORT = 3.0  # a 3.1.1 connection the broker closed within this many seconds counts
    REPEATS = 3  # ... this many times in a row

    def __init__(self, client_id: str, name: str) -> None:
        self.client_id, self.name = client_id, name
        self._takeovers: list[float] = []
        self._short_closes = 0
        self.reported = 0

    def taken_over(self) -> None:
        """The broker closed the connection with reason "Session taken over" (MQTT 5)."""
        now = time.monotonic()
        self._takeovers = [t for t in self._takeovers if now - t < self.WINDOW] + [now]
        count = len(self._takeovers)
        if count == 1:
            log.warning("%s connection: session taken over by another client with client id %r",
                        self.name, self.client_id)
        else:
            self._report(f"{count} session takeovers in {now - self._takeovers[0]:.0f} s")

    def closed(self, lasted: float, by_broker: bool) -> None:
        """A connection the broker had accepted ended after ``lasted`` seconds (MQTT 3.1.1)."""
        if by_broker and lasted < self.SHORT:
            self._short_closes += 1
            if self._short_closes >= self.REPEATS:
                self._report(f"the broker closed the connection {self._short_closes} times in a row "
                             f"right after accepting it")
        else:
            self._short_closes = 0

    def _report(self, what: str) -> None:
        self.reported += 1
        log.error("%s connection: client id %r seems to be in use by another client (%s): two bridges "
                  "must not share mqtt.client_id; reconnecting with growing delays (up to "
                  "mqtt.reconnect_max_delay)", self.name, self.client_id, what)


class Dialer(Protocol):
    """What :func:`keep_connected` drives (bridge.transport.Connection)."""

    name: str
    stopping: bool
    down: asyncio.Event  # set while there is no connection
    refusal: str  # why the last attempt got no session
    taken_over: bool  # the last connection ended with "Session taken over"

    def tls_context(self) -> ssl.SSLContext | None: ...
    def begin(self, sock: socket.socket) -> asyncio.Future[bool]: ...  # CONNECT sent: accepted?
    def abort(self) -> None: ...  # close the socket of an attempt that got no session


async def keep_connected(dialer: Dialer, host: str, port: int, protocol: ProtocolChoice,
                         backoff: Backoff, clash: ClashWatch) -> None:
    """Connect, and reconnect with capped exponential backoff, until ``dialer.stopping``.

    Each failed step is logged once, with the delay before the next one.
    """
    while not dialer.stopping:
        try:
            sock = await open_socket(host, port, dialer.tls_context())
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            wait = backoff.failed()
            log.warning("%s connection: cannot connect to %s:%d (%s); retrying in %.1f s",
                        dialer.name, host, port, exc or type(exc).__name__, wait)
            await asyncio.sleep(wait)
            continue
        if dialer.stopping:
            sock.close()
            break
        try:
            async with asyncio.timeout(CONNACK_TIMEOUT):
                accepted = await dialer.begin(sock)
        except TimeoutError:
            dialer.refusal, accepted = f"no CONNACK within {CONNACK_TIMEOUT:g} s", False
        if not accepted:
            dialer.abort()
            if dialer.stopping:
                break
            refused = dialer.refusal.startswith(REFUSED)
            # A refusal of the version, or no answer at all: the broker may not speak it.
            if (not refused or "protocol version" in dialer.refusal) and protocol.rejected(dialer.name, dialer.refusal):
                continue  # auto: MQTT 3.1.1, at once
            wait = backoff.failed()
            log.log(logging.ERROR if refused else logging.WARNING,
                    "%s connection: cannot connect to %s:%d (%s); retrying in %.1f s",
                    dialer.name, host, port, dialer.refusal, wait)
            await asyncio.sleep(wait)
            continue
        started = time.monotonic()
        await dialer.down.wait()
        if dialer.stopping:
            break
        lasted = time.monotonic() - started
        if not dialer.taken_over:
            clash.closed(lasted, by_broker=True)
        await asyncio.sleep(backoff.lasted(lasted))
