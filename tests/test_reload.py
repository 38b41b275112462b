"""SIGHUP: new config and functions, same MQTT session; a bad config keeps the old one."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from tests.support.bridgeproc import EXAMPLES, render_toml
from tests.support.clients import rr
from tests.support.load import Requester
from tests.support.waiting import file_lines, wait_for
from tests.support.web import wait_health


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


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_a_reload_lets_calls_in_progress_finish_on_the_old_code(make_bridge, broker, topic_prefix, tmp_path, mode):
    t = topic_prefix
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    started = tmp_path / "started.txt"
    (handlers / "work.py").write_text(
        "import time\n\ndef handle(req):\n"
        f"    open({str(started)!r}, 'a').write('x\\n')\n"
        "    time.sleep(float(req.body or 0))\n    return {'body': 'old'}\n")
    bridge = make_bridge([{"topic": f"{t}/work", "handler": "work", "timeout": 10}], handlers_dir=handlers,
                         workers={"mode": mode})
    rq = Requester(broker.port, f"rw-{tmp_path.name}"[:23])
    results: list[bytes] = []
    try:
        slow = threading.Thread(target=lambda: results.append(rq.request(f"{t}/work", "2", timeout=10)[0]))
        slow.start()
        file_lines(started, 1)  # the slow call runs the old code
        (handlers / "work.py").write_text("def handle(req):\n    return {'body': 'new'}\n")
        _reload(bridge, 1, "reloaded")
        fresh = json.loads(rq.request(f"{t}/work", "0")[0])["body"]
        slow.join(10)
    finally:
        rq.close()
    assert fresh == "new"  # a new call runs the new code at once
    assert json.loads(results[0])["body"] == "old"  # the call in progress finished as it began


def test_a_reload_changes_the_payload_limit_of_http_invoke_too(make_bridge, topic_prefix):
    """limits.max_payload raised by a reload: a body between the old and the new limit is
    taken over HTTP as over MQTT.  HTTP kept the limit the bridge started with (413)."""
    bridge = make_bridge([{"topic": f"{topic_prefix}/echo", "handler": "echo"}], handlers_dir=EXAMPLES,
                         limits={"max_payload": 1000})
    url = f"{bridge.http_url}/invoke/echo"
    assert requests.post(url, data="x" * 5000, timeout=10).status_code == 413
    bridge.config_path.write_text(render_toml(dict(bridge.config, limits={"max_payload": 100_000})))
    _reload(bridge, 1, "reloaded")
    answer = requests.post(url, data="x" * 5000, timeout=10)
    assert (answer.status_code, len(answer.text)) == (200, 5000)
    assert requests.post(url, data="x" * 100_001, timeout=10).status_code == 413


def test_a_reload_applies_the_logging_level(make_bridge, topic_prefix):
    """logging.level is not among what needs a restart, and a reload applies it (it kept the
    level the bridge started with): here WARNING, then INFO, so the reload's own line shows."""
    bridge = make_bridge([{"topic": f"{topic_prefix}/echo", "handler": "echo"}], handlers_dir=EXAMPLES,
                         logging={"level": "WARNING"}, start=False).start(wait_ready=False)
    wait_health(bridge.http_url, 200)
    assert "ready: subscribed" not in bridge.log()  # an INFO line
    bridge.config_path.write_text(render_toml(dict(bridge.config, logging={"level": "INFO"})))
    _reload(bridge, 1, "reloaded")


def test_an_import_that_never_ends_fails_the_reload_and_the_next_one_applies(make_bridge, broker, topic_prefix,
                                                                             tmp_path):
    """A handler whose import loops for ever: the reload gives up after workers.load_timeout,
    naming the module, and the workers stuck importing it are killed; the previous functions
    serve on, and a reload after the fix applies.  Reloads once waited on it for good."""
    t = topic_prefix
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    _write_handler(handlers, "greet", "v1")
    bridge = make_bridge([{"topic": f"{t}/a", "handler": "greet"}], handlers_dir=handlers,
                         workers={"processes": 1, "load_timeout": 2})
    workers = _children(bridge.proc.pid)
    (handlers / "greet.py").write_text("while True:\n    pass\n")
    _reload(bridge, 1, "reload failed; still serving the previous configuration: the workers did not import "
                       "the handlers within 2 s (workers.load_timeout): still importing greet")
    assert rr(broker.port, f"{t}/a", "x")["body"] == "v1"
    wait_for(lambda: _children(bridge.proc.pid) == workers, 10, "only the serving worker left")
    _write_handler(handlers, "greet", "v2")
    _reload(bridge, 1, "reloaded")
    assert rr(broker.port, f"{t}/a", "x")["body"] == "v2"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return sorted(out)


def test_a_sighup_while_starting_is_applied_once_serving(make_bridge, broker, topic_prefix, tmp_path):
    """A file changed and SIGHUP sent while the bridge still imports the handlers (a
    deployment script that does not wait): the change applies once it serves.  It was
    dropped with a message saying the bridge was not running from a config file."""
    t = topic_prefix
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "greet.py").write_text("import time\ntime.sleep(1.5)\n\ndef handle(req):\n    return {'body': 'v1'}\n")
    bridge = make_bridge([{"topic": f"{t}/a", "handler": "greet"}], handlers_dir=handlers,
                         start=False).start(wait_ready=False)
    bridge.wait_for_log("loading 1 function(s)")  # signals are handled from here on
    _write_handler(handlers, "greet", "v2")
    bridge.signal(signal.SIGHUP)
    bridge.wait_ready(20)
    bridge.wait_for_log("reloaded", 20)
    assert rr(broker.port, f"{t}/a", "x")["body"] == "v2"
