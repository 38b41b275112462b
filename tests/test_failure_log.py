"""Failures are visible: every request that ends in an error is logged once at WARNING with
its route, function, status, error and file:line (never the payload); ``logging.access``
adds a line per request.  Real daemon, real broker, both worker modes."""

from __future__ import annotations

import re

import pytest

from tests.support.clients import rr

SECRET_PAYLOAD = "payload-that-must-not-be-logged"


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line and "bridge.dispatch" in line]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_each_failure_is_logged_once_with_where_it_happened(make_bridge, broker, topic_prefix, tmp_path, mode):
    t = topic_prefix
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "boom.py").write_text("def handle(req):\n    x = 1\n    raise ValueError('no good')\n")
    (handlers / "garbage.py").write_text("def handle(req):\n    return 42\n")
    (handlers / "broken.py").write_text("def handle(req)\n    return None\n")
    (handlers / "slow.py").write_text("import time\n\ndef handle(req):\n    time.sleep(5)\n")
    bridge = make_bridge([{"topic": f"{t}/boom", "handler": "boom"},
                          {"topic": f"{t}/garbage", "handler": "garbage"},
                          {"topic": f"{t}/broken", "handler": "broken"},
                          {"topic": f"{t}/slow", "handler": "slow", "timeout": 0.3},
                          {"topic": f"{t}/small", "handler": "boom"}],
                         handlers_dir=handlers, workers={"mode": mode}, limits={"max_payload": 64})
    statuses = [rr(broker.port, f"{t}/{route}", SECRET_PAYLOAD)["status_code"]
                for route in ("boom", "garbage", "broken", "slow")]
    statuses.append(rr(broker.port, f"{t}/small", "x" * 100)["status_code"])
    statuses.append(rr(broker.port, f"{t}/boom", "x", props=[("publish", "user-property", "method", "BREW")])["status_code"])
    assert statuses == [500, 500, 503, 504, 413, 405]
    broken = rr(broker.port, f"{t}/broken", "x")["body"]["error"]["message"]
    assert "SyntaxError: expected ':' (broken.py:1)" in broken  # file:line in the 503 reply
    log = bridge.log()
    warnings = _warnings(log)
    expected = [
        (f"route {t}/boom, function boom: 500 ValueError: ValueError at line 3: no good", "boom.py:3)"),
        (f"route {t}/garbage, function garbage: 500 ResultError: function garbage returned an invalid result", "garbage.py"),
        (f"route {t}/broken, function broken: 503 ImportError: function broken is unavailable", "(broken.py:1)"),
        (f"route {t}/slow, function slow: 504 Timeout: function slow timed out after 0.3 s", ""),
        (f"route {t}/small, function boom: 413 PayloadTooLarge: payload of 100 bytes exceeds the limit of 64", ""),
        (f"route {t}/boom, function boom: 405 MethodNotAllowed: method 'BREW' not allowed", ""),
    ]
    for text, where in expected:
        found = [w for w in warnings if text in w]
        assert len(found) == (2 if "broken" in text else 1), (text, warnings)  # once per request
        assert where in found[0]
    assert SECRET_PAYLOAD not in log
    assert "broken.py:1" in log  # the import failure at start names the line too


def test_access_log_has_one_line_per_request(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/ok", "handler": "inspect_event"}], logging={"access": True})
    for _ in range(3):
        rr(broker.port, f"{t}/ok", SECRET_PAYLOAD)
    lines = [l for l in bridge.log().splitlines() if "bridge.access" in l]
    assert len(lines) == 3
    assert all(re.search(rf"bridge.access: {t}/ok inspect_event 200 \d+\.\d ms$", l) for l in lines), lines
    assert SECRET_PAYLOAD not in bridge.log()


def test_no_access_log_by_default(make_bridge, broker, topic_prefix):
    bridge = make_bridge([{"topic": f"{topic_prefix}/ok", "handler": "inspect_event"}])
    rr(broker.port, f"{topic_prefix}/ok", "x")
    assert "bridge.access" not in bridge.log()
