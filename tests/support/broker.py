"""Start a private mosquitto from the project's ``mosquitto.conf`` on a free loopback port.

Used by the test fixtures and the benchmark; never touches a broker already running on the
machine (such as a system mosquitto on 1883).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "mosquitto.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``port`` (or raise)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
            time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Signal a broker process and wait for it, killing it after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Broker:
    """A mosquitto process in ``workdir``; ``restart()`` keeps its port and persistence."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_conf(self) -> None:
        text = CONF.read_text()
        text = re.sub(r"^listener \d+ ", f"listener {self.port} ", text, count=1, flags=re.M)
        text = re.sub(
            r"^persistence_location .*$",
            f"persistence_location {self.workdir}/",
            text,
            count=1,
            flags=re.M,
        )
        self.conf_path.write_text(text + "\n" + self.extra)

    def start(self) -> "Broker":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_conf()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_port(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto_available() -> bool:
    return any(
        os.access(os.path.join(p, "mosquitto"), os.X_OK)
        for p in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin"]
    )
