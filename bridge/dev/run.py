"""``make run``: use the broker at the configured address, else start one from mosquitto.conf.

Then run the bridge in the foreground, reload it whenever a function or the config changes
(:mod:`bridge.dev.watch`), and stop the broker it started when the bridge exits.  Everything it
writes stays under ``run/`` (ignored by git).  A developer convenience; production runs
``iot-bridge run`` under systemd.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from ..config import BridgeConfig, load_config
from ..errors import ConfigError
from .watch import answers, reload_on_change

ROOT = Path(__file__).resolve().parents[2]


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
    conf = state / "mosquitto.conf"
    conf.write_text(text)
    log = open(state / "mosquitto.log", "ab")
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not _answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mosquitto did not start; see {state / 'mosquitto.log'}")
        time.sleep(0.05)
    return proc


def banner(pid: int, config: BridgeConfig, config_path: str) -> str:
    """What ``make run`` prints once the bridge is started."""
    port = config.mqtt.port
    p = f" -p {port}" if port != 1883 else ""
    url = f"http://{config.http.listen}/" if config.http.listen else None
    auth = ' -H "Authorization: Bearer $TOKEN"' if config.http.token_secret else ""
    lines = [
        f"iot-bridge is running as PID {pid}.",
        f"  Status page:   {url}" if url else "  Status page:   off ([http] listen is empty)",
        f"  Reload:        automatic when {config.handlers_dir.name}/*.py or {config_path} change; "
        f"by hand: kill -HUP {pid}",
        "",
        "Try it from another terminal:",
        f"  mosquitto_rr -V 5{p} -t functions/python/echo -e replies/me -m hi -W 5",
        f"  mosquitto_sub{p} -t 'functions/python/+/reply' -v &",
        f"  mosquitto_pub{p} -t functions/python/sum -m 1,2,3.5",
    ]
    if url:
        lines.append(f"  curl{auth} -d 1,2,3 {url}invoke/sum")
    return "\n".join(lines) + "\n"


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
    bridge = subprocess.Popen([sys.executable, "-m", "bridge.cli", "run", "--config", config_path])

    def forward(sig: int, _frame: FrameType | None) -> None:
        bridge.send_signal(sig)  # SIGTERM/SIGINT: the bridge finishes its work, then we stop

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)  # Ctrl-C reaches the bridge too (same process group)
    print(banner(bridge.pid, config, config_path), flush=True)
    url = f"http://{config.http.listen}/" if config.http.listen else None
    stop = threading.Event()
    watcher = threading.Thread(
        target=reload_on_change, name="watch", daemon=True,
        args=(bridge.pid, config.handlers_dir, Path(config_path), Path.cwd(), stop,
              (lambda: answers(url)) if url else (lambda: True),
              lambda text: print(text, flush=True)))
    watcher.start()
    try:
        while True:
            try:
                return bridge.wait()
            except KeyboardInterrupt:
                continue  # the bridge got the SIGINT too; wait for it to finish
    finally:
        stop.set()
        if broker is not None:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
