"""Brokers other than mosquitto, started by the tests on a free loopback port like mosquitto is
(tests/support/broker.py), with the same small interface: ``port``, ``start()``, ``stop(sig)``,
``log()``.

* aedes (Node.js): the npm package is installed outside the repository, under
  ``$IOT_BRIDGE_NODE_DIR`` (default ``.venv/node``), by ``make test`` or here when missing.
* amqtt (Python): from the ``test`` extra; ``users=True`` requires a username (any password),
  which is what makes amqtt keep a client's session.
* RabbitMQ with its MQTT plugin (``make compat`` only): Debian's rabbitmq-server, run as a
  private node in a temporary directory, MQTT on a free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.broker import ROOT, free_port, stop_process, wait_port

AEDES_VERSION = "1.2.0"
NODE_DIR = Path(os.environ.get("IOT_BRIDGE_NODE_DIR", ROOT / ".venv" / "node"))
AEDES_SCRIPT = Path(__file__).with_name("aedes_broker.mjs")
RABBITMQ_USER, RABBITMQ_PASSWORD = "bridge", "pw"  # the password the test clients give


def aedes_dir() -> Path:
    """The installed aedes package; installed with npm when missing."""
    package = NODE_DIR / "node_modules" / "aedes"
    if not (package / "package.json").exists():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is not installed: run `make test`, which installs nodejs and npm")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
                        f"aedes@{AEDES_VERSION}"], check=True, timeout=300, capture_output=True)
    return package


@dataclass
class ProcessBroker:
    """A broker process writing its log to ``workdir``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    kind = "broker"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    start_timeout = 30.0  # seconds until its port must answer
    own_session = False  # its own process group (a broker that starts helper processes)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None  # this process's

    def start(self) -> "ProcessBroker":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     env=self.environment(), start_new_session=self.own_session)
        log.close()
        try:
            wait_port(self.port, timeout=self.start_timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.kind} did not start:\n{self.log()}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def __enter__(self) -> "ProcessBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Aedes(ProcessBroker):
    kind = "aedes"
    username: str | None = None

    def command(self) -> list[str]:
        return ["node", str(AEDES_SCRIPT), str(self.port), str(aedes_dir())]


@dataclass
class Amqtt(ProcessBroker):
    """amqtt; ``users``: clients must give a username (their sessions are then kept)."""

    kind = "amqtt"
    users: bool = False

    @property
    def username(self) -> str | None:
        return "bridge" if self.users else None

    def command(self) -> list[str]:
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            f"    allow_anonymous: {'false' if self.users else 'true'}\n")
        return [str(Path(sys.executable).with_name("amqtt")), "-c", str(conf)]


@dataclass
class RabbitMq(ProcessBroker):
    """A private RabbitMQ node (Debian's rabbitmq-server) with the MQTT plugin on ``port``."""

    kind = "rabbitmq"
    username: str | None = RABBITMQ_USER
    start_timeout = 120.0
    own_session = True  # the Erlang VM and its helpers, stopped as a group

    def environment(self) -> dict[str, str]:
        node_port, dist_port = free_port(), free_port()
        base = self.workdir / "node"
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{node_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = false\n"
            f"default_user = {RABBITMQ_USER}\ndefault_pass = {RABBITMQ_PASSWORD}\n"
            "loopback_users = none\n")
        return {
            **os.environ,
            "RABBITMQ_NODENAME": f"bridge{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(node_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_BASE": str(base),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "HOME": str(base),
        }

    def command(self) -> list[str]:
        return ["/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the Erlang VM and epmd-less helpers
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        # The Erlang VM started the port mapper daemon (epmd) if none ran: stop it when no
        # other node uses it.
        names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, timeout=10)
        if names.returncode == 0 and "name " not in names.stdout:
            subprocess.run(["epmd", "-kill"], capture_output=True, timeout=10)
