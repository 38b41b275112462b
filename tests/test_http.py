"""The HTTP endpoint over real HTTP, against the real daemon and a real broker: /invoke,
/async-invoke, the bearer token, /metrics."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading

import pytest
import requests

from tests.conftest import EXAMPLES
from tests.support.bridgeproc import ROOT
from tests.support.broker import free_port
from tests.support.clients import rr
from tests.support.waiting import wait_for
from tests.support.web import CallbackServer, get, samples, value


def _same(mqtt: dict, http: requests.Response) -> None:
    """The HTTP response says what the MQTT json reply says: status, headers, body."""
    assert http.status_code == mqtt["status_code"]
    for name, expected in mqtt["headers"].items():
        assert http.headers[name] == expected, name
    if http.headers["Content-Type"] == "application/json":
        assert http.json() == mqtt["body"]
    else:
        assert http.text == mqtt["body"]
    assert http.headers["X-Invoked"] == "true"


def test_invoke_answers_as_the_same_request_over_mqtt_for_both_styles(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([
        {"topic": f"{t}/echo", "handler": "echo"},
        {"topic": f"{t}/async", "handler": "echo_async"},
        {"topic": f"{t}/sum", "handler": "sum"},
        {"topic": f"{t}/hello", "handler": "hello"},
    ], handlers_dir=EXAMPLES)
    base = bridge.http_url
    cases = [  # (route, MQTT request, HTTP request)
        ("echo", dict(message="hi"), dict(method="POST", data=b"hi")),
        ("async", dict(message="x"), dict(method="POST", data=b"x")),
        ("sum", dict(message="1,2,3.5"), dict(method="POST", data=b"1,2,3.5")),
        ("sum", dict(message="1,two"), dict(method="PUT", data=b"1,two")),  # 400 from the function
        ("hello", dict(message="", props=[("publish", "user-property", "query", "name=Ada")]),
         dict(method="GET", params={"name": "Ada"})),
        ("hello", dict(message="", props=[("publish", "user-property", "method", "DELETE")]),
         dict(method="DELETE")),  # 405 from the function itself
    ]
    handlers = {"echo": "echo", "async": "echo_async", "sum": "sum", "hello": "hello"}
    for route, over_mqtt, over_http in cases:
        reply = rr(broker.port, f"{t}/{route}", over_mqtt.pop("message"), **over_mqtt)
        answer = requests.request(url=f"{base}/invoke/{handlers[route]}", timeout=10, **over_http)
        _same(reply, answer)


def test_invoke_errors_give_the_same_error_object_and_unknown_functions_404(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/boom", "handler": "boom"},
                          {"topic": f"{t}/faas", "handler": "faas_inspect"},
                          {"topic": f"{t}/broken", "handler": "broken_import"}])
    base = bridge.http_url
    _same(rr(broker.port, f"{t}/boom", "abc"), requests.post(f"{base}/invoke/boom", data="abc", timeout=10))
    assert requests.post(f"{base}/invoke/boom", data="abc", timeout=10).json()["error"]["details"]["exception_line_number"] == 3
    faas = rr(broker.port, f"{t}/faas", "", props=[("publish", "user-property", "method", "GET"),
                                                    ("publish", "user-property", "query", "name=x")])
    _same(faas, requests.get(f"{base}/invoke/faas_inspect/any/path?name=x", timeout=10))
    broken = requests.post(f"{base}/invoke/broken_import", timeout=10)
    assert broken.status_code == 503 and "this_module_does_not_exist" in broken.json()["error"]["message"]
    missing = requests.post(f"{base}/invoke/nothing_here", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no function 'nothing_here': no route has it as its handler"
    options = requests.options(f"{base}/invoke/boom", timeout=10)
    assert options.status_code == 405 and "OPTIONS" in options.json()["error"]["message"]
    assert options.headers["Allow"] == "DELETE, GET, PATCH, POST, PUT"


def test_invoke_passes_method_path_query_headers_and_body(make_bridge, topic_prefix):
    bridge = make_bridge([{"topic": f"{topic_prefix}/inspect", "handler": "inspect_event"}])
    answer = requests.put(f"{bridge.http_url}/invoke/inspect_event/dev/7?a=1&a=2&b=",
                          data="payload", headers={"X-Trace": "one", "Content-Type": "text/csv"}, timeout=10)
    body = answer.json()
    assert answer.status_code == 200
    assert body["method"] == "PUT" and body["path"] == "/dev/7" and body["body"] == "payload"
    assert body["query"] == {"a": ["1", "2"], "b": [""]}
    assert body["headers"]["X-Trace"] == ["one"] and body["content_type"] == "text/csv"


def test_invoke_shares_timeouts_and_the_in_flight_limit_with_mqtt(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/slow", "handler": "slow", "timeout": 1.0, "concurrency": 2}],
                         limits={"max_in_flight": 1})
    base = bridge.http_url
    timed_out = requests.post(f"{base}/invoke/slow", data="2", timeout=10)
    assert timed_out.status_code == 504
    assert "timed out after 1 s" in timed_out.json()["error"]["message"]
    # One call in progress holds the only slot: another HTTP call is refused at once with 429 ...
    first: dict[str, requests.Response] = {}
    holder = threading.Thread(target=lambda: first.setdefault("r", requests.post(f"{base}/invoke/slow", data="0.8", timeout=10)))
    holder.start()
    try:
        wait_for(lambda: value(samples(base), "iot_bridge_in_flight") == 1, 5, "the first call in flight")
        refused = requests.post(f"{base}/invoke/slow", data="0", timeout=10)
        assert refused.status_code == 429
        assert "limits.max_in_flight" in refused.json()["error"]["message"]
    finally:
        holder.join(10)
    assert first["r"].status_code == 200
    # ... and the limit stops MQTT intake too; once free, an MQTT request is answered.
    assert rr(broker.port, f"{t}/slow", "0")["status_code"] == 200
    metrics = samples(base)
    assert value(metrics, "iot_bridge_refused_total", reason="max_in_flight") == 1
    assert value(metrics, "iot_bridge_requests_total", route=f"{t}/slow", function="slow", status="504") == 1
    assert value(metrics, "iot_bridge_requests_total", route=f"{t}/slow", function="slow", status="200") == 2


def test_async_invoke_answers_202_and_posts_the_reply_document_to_the_callback(make_bridge, topic_prefix):
    bridge = make_bridge([{"topic": f"{topic_prefix}/slow", "handler": "slow"},
                          {"topic": f"{topic_prefix}/boom", "handler": "boom"}])
    callback = CallbackServer().start()
    try:
        accepted = requests.post(f"{bridge.http_url}/async-invoke/slow", data="1.5", timeout=10,
                                 headers={"X-Callback-Url": callback.url})
        assert accepted.status_code == 202
        # Answered while the function still runs: it holds its in-flight slot, nothing posted yet.
        assert value(samples(bridge.http_url), "iot_bridge_in_flight") == 1
        assert callback.received == []
        call_id = accepted.headers["X-Call-Id"]
        got = callback.wait(1)[0]
        assert got.path == "/done?key=abc"
        assert got.headers["X-Call-Id"] == call_id and got.headers["X-Function-Status"] == "200"
        assert got.json() == {"status_code": 200, "headers": {"Content-Type": "text/plain; charset=utf-8"},
                              "body": "slept 1.5"}
        requests.post(f"{bridge.http_url}/async-invoke/boom", data="ab", timeout=10,
                      headers={"X-Callback-Url": callback.url})
        error = callback.wait(2)[1].json()
        assert error["status_code"] == 500 and error["body"]["error"]["message"] == "ValueError at line 3: cannot use 2 bytes"
    finally:
        callback.stop()
    assert "key=abc" not in bridge.log()  # a callback's query may hold a secret


def test_async_invoke_callback_is_retried_until_the_server_is_up(make_bridge, topic_prefix):
    bridge = make_bridge([{"topic": f"{topic_prefix}/echo", "handler": "echo"}], handlers_dir=EXAMPLES,
                         http={"callback_attempts": 8})
    port = free_port()  # nothing listens there yet: connection refused
    accepted = requests.post(f"{bridge.http_url}/async-invoke/echo", data="late", timeout=10,
                             headers={"X-Callback-Url": f"http://127.0.0.1:{port}/cb"})
    assert accepted.status_code == 202
    bridge.wait_for_log("retrying (attempt 1 of 8)")
    callback = CallbackServer(port=port).start()
    try:
        got = callback.wait(1, timeout=30)
        assert got[0].json()["body"] == "late"
    finally:
        callback.stop()
    assert value(samples(bridge.http_url), "iot_bridge_callbacks_total", outcome="delivered") == 1


def test_a_functions_framing_headers_never_reach_http_and_bad_names_are_a_clear_error(make_bridge, topic_prefix):
    """Content-Length, Transfer-Encoding and Connection are the server's: a function's own
    (here a Content-Length of 3 for 11 bytes) once cut the body short and corrupted the next
    response on the connection.  A name HTTP cannot carry is a 500 naming it."""
    bridge = make_bridge([{"topic": f"{topic_prefix}/h", "handler": "http_headers"}])
    with requests.Session() as session:  # one kept-alive connection
        first = session.post(f"{bridge.http_url}/invoke/http_headers", data="framing", timeout=10)
        assert (first.status_code, first.text, first.headers["X-Kept"]) == (200, "hello world", "yes")
        assert "Transfer-Encoding" not in first.headers and first.headers["Content-Length"] == "11"
        second = session.post(f"{bridge.http_url}/invoke/http_headers", data="plain", timeout=10)
        assert (second.status_code, second.text) == (200, "hello world")
        for what, name in (("space", "Bad Header"), ("empty", "")):
            bad = session.post(f"{bridge.http_url}/invoke/http_headers", data=what, timeout=10)
            assert bad.status_code == 500
            assert bad.json()["error"]["message"] == f"reply could not be encoded: header {name!r} cannot be sent over HTTP"


def test_an_unusable_callback_url_is_refused_and_its_query_never_logged(make_bridge, topic_prefix):
    """A port that is no number or out of range, a broken IPv6 host: 400 at once.  They were
    accepted (202), and the failed delivery logged a traceback quoting the whole URL, token
    in the query included."""
    bridge = make_bridge([{"topic": f"{topic_prefix}/echo", "handler": "echo"}], handlers_dir=EXAMPLES,
                         http={"callback_attempts": 1})
    url = f"{bridge.http_url}/async-invoke/echo"
    for callback in ("http://127.0.0.1:abc/cb?token=SECRET", "http://127.0.0.1:99999/cb?token=SECRET",
                     "http://[::1/cb?token=SECRET"):
        refused = requests.post(url, data="hi", headers={"X-Callback-Url": callback}, timeout=10)
        assert refused.status_code == 400, callback
        assert refused.json()["error"]["message"] == "X-Callback-Url must be an http:// or https:// URL"
    nobody = f"http://127.0.0.1:{free_port()}/cb?token=SECRET"  # valid, but nothing listens there
    assert requests.post(url, data="hi", headers={"X-Callback-Url": nobody}, timeout=10).status_code == 202
    bridge.wait_for_log("not delivered", 20)
    assert "SECRET" not in bridge.log() and "Traceback" not in bridge.log(), bridge.log()


def test_a_gzip_request_body_reaches_the_function_decoded_with_headers_that_say_so(make_bridge, topic_prefix):
    """The server decompresses it; the function once got the plain body with headers still
    saying gzip and the compressed length."""
    bridge = make_bridge([{"topic": f"{topic_prefix}/i", "handler": "inspect_event"}])
    packed = gzip.compress(b"hello " * 100)
    answer = requests.post(f"{bridge.http_url}/invoke/inspect_event", data=packed,
                           headers={"Content-Encoding": "gzip", "X-Custom": "kept"}, timeout=10)
    seen = answer.json()
    assert seen["body"] == "hello " * 100
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert "content-encoding" not in headers and headers["content-length"] == ["600"] and headers["x-custom"] == ["kept"]


def test_a_token_is_required_when_token_secret_is_set(make_bridge, topic_prefix, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "http-token").write_text("s3cret-token\n")
    (secrets / "http-token").chmod(0o600)
    bridge = make_bridge([{"topic": f"{topic_prefix}/echo", "handler": "echo"}], handlers_dir=EXAMPLES,
                         secrets={"dir": str(secrets)}, http={"token_secret": "http-token"})
    base = bridge.http_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        for path in ("/invoke/echo", "/async-invoke/echo"):
            refused = requests.post(base + path, data="hi", headers=headers, timeout=10)
            assert refused.status_code == 401, (path, headers)
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert refused.json()["error"]["status"] == 401
    ok = requests.post(f"{base}/invoke/echo", data="hi", headers={"Authorization": "Bearer s3cret-token"}, timeout=10)
    assert (ok.status_code, ok.text) == (200, "hi")
    assert get(base + "/__/health").status_code == 200  # health and metrics stay open
    assert value(samples(base), "iot_bridge_refused_total", reason="unauthorized") == 6
    assert "s3cret-token" not in bridge.log()


def _run_exit(config_text: str, tmp_path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bridge.toml"
    path.write_text(config_text)
    return subprocess.run([sys.executable, "-m", "bridge.cli", "run", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_listening_off_loopback_without_a_token_exits_2_naming_the_key(tmp_path):
    out = _run_exit('[http]\nlisten = "0.0.0.0:%d"\n' % free_port(), tmp_path)
    assert out.returncode == 2
    assert "http.token_secret" in out.stderr and "0.0.0.0" in out.stderr
    missing = _run_exit(f'[http]\nlisten = "0.0.0.0:{free_port()}"\ntoken_secret = "nope"\n'
                        f'[secrets]\ndir = "{tmp_path}"\n', tmp_path)
    assert missing.returncode == 2 and "http.token_secret: no secret named 'nope'" in missing.stderr


@pytest.mark.parametrize("content, why", [(b"", "is empty"), (b"\n", "is empty"),
                                          (b"\xff\xfe", "cannot be read: UnicodeDecodeError")])
def test_an_empty_or_unreadable_token_secret_exits_2_naming_the_key(tmp_path, content, why):
    """Such a token was once taken as "": an empty ``Authorization: Bearer`` got in."""
    (tmp_path / "http-token").write_bytes(content)
    (tmp_path / "http-token").chmod(0o600)
    out = _run_exit(f'[http]\nlisten = "0.0.0.0:{free_port()}"\ntoken_secret = "http-token"\n'
                    f'[secrets]\ndir = "{tmp_path}"\n', tmp_path)
    assert out.returncode == 2, out.stderr
    assert "http.token_secret: " in out.stderr and why in out.stderr, out.stderr


def test_metrics_count_what_was_sent(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/sum", "handler": "sum"}], handlers_dir=EXAMPLES,
                         limits={"max_payload": 100})
    base = bridge.http_url
    for body in ("1,2", "3,4", "5", "x"):
        rr(broker.port, f"{t}/sum", body)
    requests.post(f"{base}/invoke/sum", data="1,y", timeout=10)  # HTTP calls count too
    metrics = samples(base)
    route = {"route": f"{t}/sum", "function": "sum"}
    assert value(metrics, "iot_bridge_requests_total", status="200", **route) == 3
    assert value(metrics, "iot_bridge_requests_total", status="400", **route) == 2
    assert value(metrics, "iot_bridge_request_duration_seconds_count", **route) == 5
    assert value(metrics, "iot_bridge_request_duration_seconds_bucket", le="+Inf", **route) == 5
    assert 0 < value(metrics, "iot_bridge_request_duration_seconds_sum", **route) < 5
    assert value(metrics, "iot_bridge_in_flight") == 0
    assert value(metrics, "iot_bridge_connected", connection="requests") == 1
    assert value(metrics, "iot_bridge_connected", connection="replies") == 1
    assert value(metrics, "iot_bridge_up") == 1
    assert ("iot_bridge_worker_restarts_total", frozenset()) in metrics
    big = rr(broker.port, f"{t}/sum", "1" * 101)  # over limits.max_payload
    assert big["status_code"] == 413
    too_big = requests.post(f"{base}/invoke/sum", data="1" * 101, timeout=10)
    assert too_big.status_code == 413 and too_big.json()["error"]["status"] == 413
    assert value(samples(base), "iot_bridge_refused_total", reason="payload_too_large") == 2
    assert "# TYPE iot_bridge_request_duration_seconds histogram" in get(base + "/metrics").text


def test_a_worker_killed_by_a_function_counts_as_a_restart_and_the_page_shows_the_workers(make_bridge, topic_prefix):
    bridge = make_bridge([{"topic": f"{topic_prefix}/deadly", "handler": "deadly"}], workers={"processes": 1})
    base = bridge.http_url
    crashed = requests.post(f"{base}/invoke/deadly", data="exit", timeout=20)
    assert crashed.status_code == 500  # the same answer an MQTT request gets when its worker dies
    wait_for(lambda: value(samples(base), "iot_bridge_worker_restarts_total") == 1, 10, "the restart counted")
    wait_for(lambda: value(samples(base), "iot_bridge_workers", state="ready") == 1, 10, "the new worker ready")
    assert requests.post(f"{base}/invoke/deadly", data="hi", timeout=20).status_code == 200
    assert "1 replaced since the start" in get(base + "/").text
