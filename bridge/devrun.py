"""``make run``: use the broker at the configured address, else start one from mosquitto.conf.

Then run the bridge in the foreground, and stop the broker it started when the bridge exits.
A developer convenience; production runs ``iot-bridge run`` under systemd.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import load_config
from .errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _start_broker(port: int) -> subprocess.Popen[bytes]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    state = ROOT / "run" / "mosquitto"
    state.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "mosquitto.conf").read_text()
    text = re.sub(r"^listener \d+ ", f"listener {port} ", text, count=1, flags=re.M)
    text = re.sub(r"^persistence_location .*$", f"persistence_location {state}/", text, count=1, flags=re.M)
    conf = Path(tempfile.mkdtemp(prefix="iot-bridge-")) / "mosquitto.conf"
    conf.write_text(text)
    log = open(state / "mosquitto.log", "ab")
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not _answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mosquitto did not start; see {state / 'mosquitto.log'}")
        time.sleep(0.05)
    return proc


def main(argv: list[str]) -> int:
    config_path = argv[0] if argv else "config/bridge.toml"
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"iot-bridge: {exc}", file=sys.stderr)
        return 2
    host, port = config.mqtt.host, config.mqtt.port
    broker = None
    if _answers(host, port):
        print(f"Using the MQTT broker already answering at {host}:{port}.")
    elif host in ("127.0.0.1", "localhost"):
        print(f"Starting mosquitto from mosquitto.conf on 127.0.0.1:{port} (state in run/mosquitto/).")
        broker = _start_broker(port)
    else:
        print(f"No broker answers at {host}:{port}; the bridge will keep retrying.")
    p = f"-p {port}" if port != 1883 else ""
    print(f"""
Try it from another terminal:
  mosquitto_rr -V 5 {p} -t functions/python/echo -e replies/me -m hi
  mosquitto_sub {p} -t 'functions/python/+/reply' -v &
  mosquitto_pub {p} -t functions/python/sum -m 1,2,3.5
""".replace("  -t", " -t"))
    try:
        return subprocess.call([sys.executable, "-m", "bridge.cli", "run", "--config", config_path])
    except KeyboardInterrupt:
        return 0
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
