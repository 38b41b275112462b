"""The real mosquitto command-line clients, as a user would run them."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any


def rr(port: int, topic: str, message: str | bytes, *, response_topic: str | None = None,
       props: list[tuple[str, ...]] = (), qos: int = 1, wait: float = 10.0,
       raw: bool = False, options: list[str] = ()) -> Any:
    """``mosquitto_rr`` a request and return its reply (parsed JSON unless ``raw``).

    ``options`` are extra command-line options, e.g. ``--cafile`` or ``-u``/``-P``."""
    # A response topic of its own, so concurrent requests never see each other's replies.
    response_topic = response_topic or f"replies/{topic}/{time.monotonic_ns()}"
    cmd = ["mosquitto_rr", "-V", "5", "-p", str(port), "-q", str(qos), "-t", topic,
           "-e", response_topic, "-W", str(int(wait)), *options]
    for prop in props:  # e.g. ("publish", "user-property", "method", "PUT")
        cmd += ["-D", *prop]
    data = message if isinstance(message, bytes) else message.encode()
    cmd += ["-m", data] if data else ["-n"]
    out = subprocess.run(cmd, capture_output=True, timeout=wait + 5)
    if out.returncode != 0:
        raise AssertionError(f"mosquitto_rr failed ({out.returncode}): {out.stderr.decode()}")
    payload = out.stdout.rstrip(b"\n")
    return payload if raw else json.loads(payload)


def pub(port: int, topic: str, message: str | bytes, *, qos: int = 1, version: int = 5,
        props: list[tuple[str, ...]] = ()) -> None:
    cmd = ["mosquitto_pub", "-V", str(version), "-p", str(port), "-q", str(qos), "-t", topic]
    for prop in props:  # e.g. ("publish", "user-property", "method", "PUT")
        cmd += ["-D", *prop]
    data = message if isinstance(message, bytes) else message.encode()
    cmd += ["-m", data] if data else ["-n"]
    subprocess.run(cmd, check=True, timeout=10)


class Sub:
    """A background ``mosquitto_sub`` writing ``topic payload`` lines to a file."""

    def __init__(self, port: int, topic: str, workdir: Path, *, qos: int = 1, extra: list[str] = ()) -> None:
        self.path = workdir / f"sub-{time.monotonic_ns()}.txt"
        self._file = open(self.path, "wb")
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-V", "5", "-p", str(port), "-q", str(qos), "-t", topic, "-v", *extra],
            stdout=self._file, stderr=subprocess.STDOUT,
        )
        # mosquitto_sub has no "subscribed" signal; a retained-free probe on its own topic
        # proves the subscription is live before the test publishes.
        self._probe(port, topic)

    def _probe(self, port: int, topic: str) -> None:
        probe = topic.replace("#", "probe").replace("+", "probe")
        deadline = time.monotonic() + 10
        while b"__probe__" not in self.path.read_bytes():
            if time.monotonic() > deadline:
                raise AssertionError("mosquitto_sub did not come up")
            subprocess.run(["mosquitto_pub", "-p", str(port), "-t", probe, "-m", "__probe__"], check=True)
            time.sleep(0.05)

    def lines(self) -> list[str]:
        return [l for l in self.path.read_text(errors="replace").splitlines() if "__probe__" not in l]

    def wait_lines(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} lines, got {self.lines()}")
            time.sleep(0.02)
        return self.lines()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._file.close()
