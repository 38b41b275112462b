"""Run the real daemon (``iot-bridge run``) as a subprocess against a test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "handlers"
TEST_HANDLERS = ROOT / "tests" / "handlers"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def render_toml(config: dict[str, Any]) -> str:
    """A small TOML writer for test configs (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def table(prefix: str, data: dict[str, Any]) -> None:
        subs = []
        for key, value in data.items():
            if isinstance(value, dict):
                subs.append((key, value))
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                subs.append((key, value))
            else:
                lines.append(f"{key} = {toml_value(value)}")
        for key, value in subs:
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                lines.append(f"\n[{name}]")
                table(name, value)
            else:
                for item in value:
                    lines.append(f"\n[[{name}]]")
                    table(name, item)

    table("", config)
    return "\n".join(lines) + "\n"


@dataclass
class BridgeProcess:
    """``iot-bridge run`` in ``workdir`` with a config written from ``config``."""

    workdir: Path
    config: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # more options for ``iot-bridge run``
    log_name: str = "bridge.log"  # bridges sharing a workdir (and config file) log apart
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "bridge.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / self.log_name

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the bridge's HTTP endpoint (``[http] listen``)."""
        return "http://" + self.config["http"]["listen"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, wait_ready: bool = True, timeout: float = 15.0) -> "BridgeProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_toml(self.config))
        self._ready_seen = self.log().count("ready: subscribed")
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config_path), *self.args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_for_log("ready: subscribed", timeout, occurrence=self._ready_seen + 1)

    def wait_for_log(self, text: str, timeout: float = 10.0, occurrence: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < occurrence:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bridge exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
