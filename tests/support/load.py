"""Load clients for fault tests: paho clients on their own network thread, plus bulk
publishing with ``mosquitto_pub -l``.

At the rates the fault tests use (hundreds to a few thousand messages per second) a Python paho
client is fast enough; it cannot measure a bridge that is faster than about 4-6k messages/s.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.waiting import wait_for



def _client(port: int, client_id: str, persistent: bool, session_expiry: int = 600, *,
            version: int = 5, username: str | None = None) -> paho.Client:
    """A client (MQTT 5 unless ``version`` is 4); ``persistent``: clean start off and a session
    the broker keeps (and persists) while the client is away, so its unacknowledged QoS 1
    publishes are retried and messages for it are queued."""
    v5 = version == 5
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=paho.MQTTv5 if v5 else paho.MQTTv311, clean_session=None if v5 else not persistent)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)  # unlimited: the publisher keeps everything until acknowledged
    c.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
    if username is not None:
        c.username_pw_set(username, "pw")
    # Without TCP_NODELAY a QoS 1 round trip stalls ~40 ms on Nagle's algorithm.
    c.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if v5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry if persistent else 0
        c.connect_async("127.0.0.1", port, keepalive=10, clean_start=not persistent, properties=props)
    else:
        c.connect_async("127.0.0.1", port, keepalive=10)
    return c


class Collector:
    """Subscribes (QoS 1, persistent session unless told otherwise) and keeps every payload."""

    def __init__(self, port: int, topic: str, client_id: str, *, persistent: bool = True, qos: int = 1,
                 version: int = 5, username: str | None = None) -> None:
        self.topic, self.qos = topic, qos
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connects = 0
        self.client = _client(port, client_id, persistent, version=version, username=username)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError(f"collector on {topic} did not subscribe")

    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self.connects += 1
        client.subscribe(self.topic, qos=self.qos)  # on every connect: the session may be new

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(m.payload)

    def count(self) -> int:
        with self._lock:
            return len(self.payloads)

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.payloads)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """Publishes on its own persistent session: paho resends unacknowledged QoS 1 messages
    after a reconnect and sends those published while disconnected once connected."""

    def __init__(self, port: int, client_id: str, *, persistent: bool = True, version: int = 5,
                 username: str | None = None) -> None:
        self._connected = threading.Event()
        self.version = version
        self.client = _client(port, client_id, persistent, version=version, username=username)
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self.sent: set[int] = set()  # mids of QoS >= 1 publishes
        self.acked: set[int] = set()  # ... that the broker acknowledged
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError("publisher did not connect")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, user_properties: list[tuple[str, str]] = ()) -> None:
        props = None
        if user_properties and self.version == 5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = list(user_properties)
        # While disconnected paho keeps the message (rc "not connected") and sends it on connect.
        info = self.client.publish(topic, payload, qos, properties=props)
        if qos:
            with self._lock:
                self.sent.add(info.mid)

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, _r: object, _p: object) -> None:
        with self._lock:
            self.acked.add(mid)

    def unacknowledged(self) -> int:
        with self._lock:
            return len(self.sent - self.acked)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Requester:
    """Closed-loop MQTT v5 request/reply (response topic + correlation data): one request in
    flight, its round trip timed."""

    def __init__(self, port: int, client_id: str) -> None:
        self.reply_topic = f"replies/rt/{client_id}"
        self._lock = threading.Lock()
        self._waiting: dict[bytes, tuple[threading.Event, list[bytes]]] = {}
        self._subscribed = threading.Event()
        self.client = _client(port, client_id, persistent=False)
        self.client.on_connect = lambda c, *_a: c.subscribe(self.reply_topic, qos=1)
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("requester did not subscribe")
        self._ids = itertools.count(1)  # thread-safe in CPython: requests may come from threads

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        corr = getattr(m.properties, "CorrelationData", None)
        with self._lock:
            slot = self._waiting.get(corr) if corr is not None else None
        if slot is not None:
            slot[1].append(m.payload)
            slot[0].set()

    def request(self, topic: str, payload: bytes | str, *, timeout: float = 10.0, qos: int = 1,
                user_properties: list[tuple[str, str]] = ()) -> tuple[bytes, float]:
        """Publish a request and wait for its reply; return (reply payload, seconds)."""
        corr = f"{os.getpid()}-{next(self._ids)}".encode()
        event, box = threading.Event(), []
        with self._lock:
            self._waiting[corr] = (event, box)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        if user_properties:
            props.UserProperty = list(user_properties)
        start = time.perf_counter()
        self.client.publish(topic, payload, qos, properties=props)
        ok = event.wait(timeout)
        elapsed = time.perf_counter() - start
        with self._lock:
            del self._waiting[corr]
        if not ok:
            raise AssertionError(f"no reply on {self.reply_topic} to a request on {topic} within {timeout:g} s")
        return box[0], elapsed

    def latencies(self, topic: str, payload: bytes | str, n: int, timeout: float = 10.0) -> list[float]:
        return [self.request(topic, payload, timeout=timeout)[1] for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def at_once(port: int, topic: str, clients: int, name: str, *, each: int = 1, join: float = 30,
            **request: object) -> list[bytes]:
    """``clients`` closed-loop requesters sending ``each`` requests to ``topic`` at the same
    time (one thread each); the replies, in no particular order."""
    rqs = [Requester(port, f"{name[:18]}-{i}") for i in range(clients)]  # client ids of at most 23
    replies: list[bytes] = []
    try:
        threads = [threading.Thread(target=lambda r=r: replies.extend(
            r.request(topic, "x", **request)[0] for _ in range(each))) for r in rqs]  # type: ignore[arg-type]
        for th in threads:
            th.start()
        for th in threads:
            th.join(join)
    finally:
        for r in rqs:
            r.close()
    return replies


def clashing_bridges(make_bridge: Any, broker: Any, client_id: str, routes: list[dict[str, Any]],
                     timeout: float = 15, window: float = 8.0) -> tuple[Any, Any, int]:
    """Two bridges on ``broker`` with one ``client_id``: wait until the clash is reported, then
    count their connects over ``window`` seconds (a rate over a fixed span, not a condition).
    Returns both bridges and that count."""
    mqtt = {"client_id": client_id, "reconnect_min_delay": 0.1, "reconnect_max_delay": 1.0}
    first = make_bridge(routes, on=broker, name="first", mqtt=mqtt)
    second = make_bridge(routes, on=broker, name="second", mqtt=mqtt, start=False)
    second.start(wait_ready=False)
    wait_for(lambda: f"client id {client_id!r} seems to be in use" in first.log() + second.log(), timeout,
             "the clash reported")
    before = first.log().count("connected to") + second.log().count("connected to")
    time.sleep(window)
    return first, second, first.log().count("connected to") + second.log().count("connected to") - before


def p50(values: list[float]) -> float:
    return statistics.median(values)


def figures(name: str, **values: object) -> None:
    """Print a test's measured figures (``pytest -s`` shows them; docs/reliability.md quotes them)."""
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def bulk_publish(port: int, topic: str, lines: Iterable[bytes], *, qos: int = 1,
                 user_properties: list[tuple[str, str]] = (), props: list[tuple[str, ...]] = (),
                 timeout: float = 120.0) -> float:
    """Publish one message per item of ``lines`` (single-line payloads) with
    ``mosquitto_pub -l``, as fast as it goes; return the seconds it took.  ``props``: more
    PUBLISH properties, e.g. ``("correlation-data", "c1")``."""
    data = b"".join(line + b"\n" for line in lines)
    cmd = ["mosquitto_pub", "-V", "5", "-p", str(port), "-q", str(qos), "-t", topic, "-l"]
    for name, value in user_properties:
        cmd += ["-D", "publish", "user-property", name, value]
    for prop in props:
        cmd += ["-D", "publish", *prop]
    start = time.monotonic()
    subprocess.run(cmd, input=data, check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - start


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class MemorySampler:
    """Samples a process's VmRSS every ``interval`` seconds on a thread; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.max_rss_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = proc_memory(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return  # the process is gone
            self.max_rss_kib = max(self.max_rss_kib, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.max_rss_kib



@contextlib.contextmanager
def connected_as(port: int, client_id: str, *, session_expiry: int = 86400, manual_ack: bool = False,
                 setup: Callable[[paho.Client], None] | None = None) -> Iterator[paho.Client]:
    """Connected with someone else's client id (clean start off: the session is theirs, and
    stays after we leave with ``session_expiry``); disconnected on exit.  ``setup`` sets
    callbacks before connecting, so nothing the broker sends at once is missed."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                    manual_ack=manual_ack)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry  # 0 would end the session when we leave
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    if setup is not None:
        setup(c)
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    try:
        if not connected.wait(10):
            raise AssertionError(f"could not connect as {client_id!r}")
        yield c
    finally:
        c.disconnect()
        c.loop_stop()


def take_over(port: int, client_id: str) -> None:
    """Connect with another client's id and leave at once: the broker drops that client's
    connection (a session takeover) and keeps its session, with every unacknowledged message,
    for it to resume.  Messages delivered here meanwhile are not acknowledged."""
    with connected_as(port, client_id, manual_ack=True):
        pass


def unfinished_in_session(port: int, client_id: str, topic: str) -> list[str]:
    """What a stopped client's session still holds unacknowledged: connect as that client,
    then publish a marker to ``topic`` (one of its subscriptions).  The broker resends what is
    in flight (a PUBLISH, or a PUBREL for QoS 2) right after CONNACK, so whatever arrives
    before the marker was left unfinished.  Returns payloads, and "PUBREL <mid>" entries."""
    marker = f"marker-{time.monotonic_ns()}".encode()
    seen: list[str] = []
    done = threading.Event()

    def on_message(_c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        if m.payload == marker:
            done.set()
        elif not done.is_set():
            seen.append(m.payload.decode(errors="replace"))

    def on_log(_c: paho.Client, _u: object, _level: int, text: str) -> None:
        if text.startswith("Received PUBREL") and not done.is_set():
            seen.append("PUBREL " + text.split("Mid: ")[-1].rstrip(")"))

    def setup(c: paho.Client) -> None:
        c.on_message, c.on_log = on_message, on_log

    with connected_as(port, client_id, setup=setup):
        subprocess.run(["mosquitto_pub", "-V", "5", "-p", str(port), "-q", "1", "-t", topic, "-m", marker],
                       check=True, timeout=10, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not done.wait(10):
            raise AssertionError("the marker did not arrive")
    return seen
