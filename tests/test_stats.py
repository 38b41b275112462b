"""bridge.stats: the status page's recent-latency window, last errors, and the worker-restart
counter the worker-process code increments."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest

from bridge import stats as stats_module
from bridge.config import parse_config
from bridge.contract import Response, error_body, error_response
from bridge.http.metrics import register
from bridge.stats import Stats, Window


def test_window_quantiles_are_within_ten_percent_and_forget_old_minutes():
    window = Window()
    for i in range(1, 1001):  # 1 ms .. 1000 ms
        window.add(i / 1000, now=600.0)
    count, p50, p99 = window.summary(now=610.0)
    assert count == 1000
    assert 0.5 <= p50 <= 0.5 * 1.1 and 0.99 <= p99 <= 0.99 * 1.1
    assert window.summary(now=600.0 + 5 * 60)[0] == 0  # five minutes later: gone
    window.add(0.002, now=900.0)
    assert window.summary(now=900.0)[0] == 1  # the slot was reset, not added to


def test_done_counts_statuses_timeouts_and_keeps_the_last_error_with_file_and_line(tmp_path):
    source = tmp_path / "calc.py"
    source.write_text("def handle(req):\n    return 1 / 0\n")
    stats = Stats()
    route = stats.route("sensors/+", "calc", str(source))
    namespace: dict = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    try:
        namespace["handle"](None)
    except ZeroDivisionError as exc:
        failure = error_response(exc, str(source))
    route.done(Response(), 0.001)
    route.done(failure, 0.002)
    route.done(error_body(504, "function calc timed out after 1 s", kind="Timeout"), 1.0)
    assert (route.requests, route.errors, route.timeouts) == (3, 1, 1)
    last = stats.last_errors["calc"]
    assert last.type == "Timeout"  # the latest 5xx wins
    route.done(failure, 0.002)
    last = stats.last_errors["calc"]
    assert (last.type, last.message, last.where) == ("ZeroDivisionError", "division by zero", "calc.py:2")
    assert stats.route("sensors/+", "calc", str(source)) is route  # kept over a reload
    text = generate_latest(stats.registry).decode()
    assert 'iot_bridge_requests_total{function="calc",route="sensors/+",status="500"} 2.0' in text


def test_worker_restarts_are_exported_for_the_worker_process_code():
    config = parse_config({"routes": [{"topic": "a", "handler": "sum"}]}, Path("."))
    route = SimpleNamespace(config=config.routes[0], function=None)
    view = SimpleNamespace(config=config, routes=[route], dispatcher=None, link=None, things=None,
                           executor=None, stats=Stats(), phase="starting")
    register(view)  # type: ignore[arg-type]
    before = stats_module.worker_restarts()
    stats_module.worker_restarted()
    stats_module.worker_restarted()
    text = generate_latest(view.stats.registry).decode()
    assert f"iot_bridge_worker_restarts_total {before + 2:.1f}" in text
    assert "iot_bridge_up 0.0" in text  # not serving yet
