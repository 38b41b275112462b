"""SIGHUP: new config and functions, same MQTT session; a bad config keeps the old one."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.support.bridgeproc import render_toml
from tests.support.clients import rr


def _write_handler(d: Path, name: str, answer: str) -> None:
    (d / f"{name}.py").write_text(f"def handle(req):\n    return {{'body': {answer!r}}}\n")


def _reload(bridge, occurrence: int, text: str) -> None:
    bridge.signal(signal.SIGHUP)
    bridge.wait_for_log(text, occurrence=occurrence)


def test_sighup_reloads_functions_and_routes_without_dropping_the_session(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    _write_handler(handlers, "greet", "v1")
    _write_handler(handlers, "other", "other")
    bridge = make_bridge([{"topic": f"{t}/a", "handler": "greet"}, {"topic": f"{t}/gone", "handler": "other"}],
                         handlers_dir=handlers)
    assert rr(broker.port, f"{t}/a", "x")["body"] == "v1"
    assert rr(broker.port, f"{t}/gone", "x")["body"] == "other"

    _write_handler(handlers, "greet", "v2")
    _write_handler(handlers, "added", "added")
    config = dict(bridge.config, routes=[{"topic": f"{t}/a", "handler": "greet"}, {"topic": f"{t}/b", "handler": "added"}])
    bridge.config_path.write_text(render_toml(config))
    _reload(bridge, 1, "reloaded")

    assert rr(broker.port, f"{t}/a", "x")["body"] == "v2"
    assert rr(broker.port, f"{t}/b", "x")["body"] == "added"
    # The removed route was unsubscribed: nothing answers it any more.
    gone = subprocess.run(["mosquitto_rr", "-V", "5", "-p", str(broker.port), "-q", "1", "-t", f"{t}/gone",
                           "-e", f"replies/{t}/gone", "-m", "x", "-W", "1"], capture_output=True, timeout=10)
    assert gone.returncode != 0 and gone.stdout == b""
    log = bridge.log()
    # Each connection connected once: the session was never dropped.
    assert log.count("requests connection: connected to") == 1, log
    assert log.count("replies connection: connected to") == 1, log
    assert "disconnected" not in log


def test_a_bad_config_on_reload_keeps_the_running_one(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    _write_handler(handlers, "greet", "v1")
    bridge = make_bridge([{"topic": f"{t}/a", "handler": "greet"}], handlers_dir=handlers)

    bridge.config_path.write_text(render_toml(dict(bridge.config, bogus_key=1)))
    _reload(bridge, 1, "reload failed; still serving the previous configuration")
    assert "bogus_key" in bridge.log()
    assert rr(broker.port, f"{t}/a", "x")["body"] == "v1"

    missing = dict(bridge.config, routes=[{"topic": f"{t}/a", "handler": "no_such_module"}])
    bridge.config_path.write_text(render_toml(missing))
    _reload(bridge, 2, "reload failed; still serving the previous configuration")
    assert "routes[0].handler" in bridge.log()
    assert rr(broker.port, f"{t}/a", "x")["body"] == "v1"
    assert bridge.proc.poll() is None
