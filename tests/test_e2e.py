"""End to end: real mosquitto, the real daemon, the real mosquitto clients."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import EXAMPLES
from tests.support.clients import Sub, pub, rr


def test_mosquitto_rr_gets_echo_reply(make_bridge, broker, topic_prefix):
    make_bridge([{"topic": f"{topic_prefix}/echo", "handler": "echo"}], handlers_dir=EXAMPLES)
    reply = rr(broker.port, f"{topic_prefix}/echo", "hi")
    assert reply == {"status_code": 200, "headers": {"Content-Type": "text/plain; charset=utf-8"}, "body": "hi"}


def test_each_handler_style_end_to_end(make_bridge, broker, topic_prefix):
    t = topic_prefix
    make_bridge([
        {"topic": f"{t}/async", "handler": "echo_async"},
        {"topic": f"{t}/sum", "handler": "sum"},
        {"topic": f"{t}/faas", "handler": "hello"},
    ], handlers_dir=EXAMPLES)
    assert rr(broker.port, f"{t}/async", "x")["body"] == "Asynchronous response: x"
    assert rr(broker.port, f"{t}/sum", "1,2,3.5")["body"] == "6.5"
    bad = rr(broker.port, f"{t}/sum", "1,two")
    assert (bad["status_code"], bad["body"]) == (400, "Invalid input format!")
    faas = rr(broker.port, f"{t}/faas", "", props=[("publish", "user-property", "query", "name=Ada")])
    assert faas["status_code"] == 200
    assert faas["body"]["greeting"] == "Hello, Ada!"
    assert faas["headers"]["X-Handled-By"] == "hello"


def test_event_carries_topic_properties_method_and_query(make_bridge, broker, topic_prefix):
    make_bridge([{"topic": f"{topic_prefix}/+/inspect", "handler": "inspect_event"}])
    topic = f"{topic_prefix}/dev7/inspect"
    reply = rr(broker.port, topic, "payload", props=[
        ("publish", "user-property", "method", "put"),
        ("publish", "user-property", "query", "a=1&a=2&b="),
        ("publish", "user-property", "X-Trace", "one"),
        ("publish", "user-property", "X-Trace", "two"),
        ("publish", "content-type", "text/csv"),
    ])
    body = reply["body"]
    assert body["method"] == "PUT"
    assert body["path"] == "/" + topic and body["topic"] == topic
    assert body["body"] == "payload"
    assert body["query"] == {"a": ["1", "2"], "b": [""]}
    assert body["headers"]["X-Trace"] == ["one", "two"]
    assert body["headers"]["X-Topic"] == [topic]
    assert body["headers"]["Content-Length"] == ["7"]
    assert body["content_type"] == "text/csv"


def test_openfaas_result_keys_and_context(make_bridge, broker, topic_prefix):
    make_bridge([{"topic": f"{topic_prefix}/faas", "handler": "faas_inspect"}],
                env={"HOSTNAME": "gateway-7"})
    reply = rr(broker.port, f"{topic_prefix}/faas", "", props=[("publish", "user-property", "method", "GET"),
                                                               ("publish", "user-property", "query", "name=x")])
    assert reply["status_code"] == 201
    assert reply["body"] == {"method": "GET", "hostname": "gateway-7", "name": "x"}
    assert reply["headers"]["Location"] == "https://www.example.com/"


def test_pub_sub_with_reply_template_and_wildcards(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    make_bridge([
        {"topic": f"{t}/plus/+/echo", "handler": "inspect_event", "reply_topic": "replies/{topic}"},
        {"topic": f"{t}/hash/#", "handler": "inspect_event", "reply_topic": "replies/{topic}"},
    ])
    sub = Sub(broker.port, f"replies/{t}/#", tmp_path)
    try:
        pub(broker.port, f"{t}/plus/a/echo", "one")
        pub(broker.port, f"{t}/hash/b/c/d", "two")
        pub(broker.port, f"{t}/hash", "three")  # '#' also matches the parent level
        lines = sub.wait_lines(3)
    finally:
        sub.close()
    replies = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in lines}
    assert replies[f"replies/{t}/plus/a/echo"]["body"]["body"] == "one"
    assert replies[f"replies/{t}/hash/b/c/d"]["body"]["body"] == "two"
    assert replies[f"replies/{t}/hash"]["body"]["body"] == "three"


def test_reply_format_body_carries_status_as_property(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    make_bridge([{"topic": f"{t}/sum", "handler": "sum", "reply_topic": "replies/{topic}", "reply_format": "body"}],
                handlers_dir=EXAMPLES)
    sub = Sub(broker.port, f"replies/{t}/sum", tmp_path, extra=["-F", "%t|%C|%P|%p"])
    try:
        pub(broker.port, f"{t}/sum", "2,3")
        line = sub.wait_lines(1)[0]
    finally:
        sub.close()
    topic, content_type, props, payload = line.split("|")
    assert content_type == "text/plain; charset=utf-8"
    assert "status:200" in props
    assert payload == "5.0"


def test_bad_input_is_answered_and_the_bridge_keeps_serving(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([
        {"topic": f"{t}/decode", "handler": "decode"},
        {"topic": f"{t}/boom", "handler": "boom"},
        {"topic": f"{t}/garbage", "handler": "garbage"},
        {"topic": f"{t}/status99", "handler": "status99"},
        {"topic": f"{t}/inspect", "handler": "inspect_event"},
    ])
    port = broker.port
    not_utf8 = rr(port, f"{t}/decode", b"\xff\xfe caf\xe9")
    assert not_utf8["status_code"] == 500
    assert not_utf8["body"]["error"]["message"].startswith("UnicodeDecodeError at line 2:")

    boom = rr(port, f"{t}/boom", "abc")["body"]["error"]
    assert boom["status"] == 500
    assert boom["message"] == "ValueError at line 3: cannot use 3 bytes"
    assert boom["details"] == {
        "exception_type": "ValueError", "exception_info": "cannot use 3 bytes",
        "exception_line_number": 3,
        "exception_line_code": 'raise ValueError(f"cannot use {len(value)} bytes")',
    }
    garbage = rr(port, f"{t}/garbage", "x")
    assert garbage["status_code"] == 500 and "returned list" in garbage["body"]["error"]["message"]
    low = rr(port, f"{t}/status99", "x")
    assert low["status_code"] == 500 and "99" in low["body"]["error"]["message"]
    method = rr(port, f"{t}/inspect", "x", props=[("publish", "user-property", "method", "BREW")])
    assert method["status_code"] == 405 and "BREW" in method["body"]["error"]["message"]

    # A response topic outside the allow-list: nothing is published there, the message is
    # acknowledged, and the next request is served.
    with_bad_topic = subprocess.run(
        ["mosquitto_rr", "-V", "5", "-p", str(port), "-q", "1", "-t", f"{t}/inspect",
         "-e", f"elsewhere/{t}", "-m", "x", "-W", "1"], capture_output=True, timeout=10)
    assert with_bad_topic.returncode != 0 and with_bad_topic.stdout == b""
    bridge.wait_for_log(f"response topic 'elsewhere/{t}' is not in replies.allowed_topics")
    assert rr(port, f"{t}/inspect", "still here")["body"]["body"] == "still here"
    assert bridge.proc.poll() is None


def test_import_failure_answers_503_and_other_routes_serve(make_bridge, broker, topic_prefix):
    t = topic_prefix
    make_bridge([{"topic": f"{t}/broken", "handler": "broken_import"},
                 {"topic": f"{t}/ok", "handler": "inspect_event"}])
    broken = rr(broker.port, f"{t}/broken", "x")
    assert broken["status_code"] == 503
    assert "this_module_does_not_exist" in broken["body"]["error"]["message"]
    assert rr(broker.port, f"{t}/ok", "x")["status_code"] == 200


def test_function_logs_and_stderr_are_tagged(make_bridge, broker, topic_prefix):
    bridge = make_bridge([{"topic": f"{topic_prefix}/chatty", "handler": "chatty"}])
    assert rr(broker.port, f"{topic_prefix}/chatty", "secret-payload-123")["body"] == "ok"
    bridge.wait_for_log("stderr from chatty")
    log = bridge.log()
    assert "[chatty] my_logger: info from chatty" in log
    assert "[chatty] function: stderr from chatty" in log
    assert "DEBUG-LINE-SHOULD-NOT-APPEAR" not in log
    assert "secret-payload-123" not in log  # payloads are never logged by default


def test_timeout_answers_504_and_other_routes_keep_serving(make_bridge, broker, topic_prefix):
    t = topic_prefix
    make_bridge([
        {"topic": f"{t}/slow", "handler": "slow", "timeout": 0.5, "concurrency": 1},
        {"topic": f"{t}/slow-async", "handler": "slow_async", "timeout": 0.5},
        {"topic": f"{t}/fast", "handler": "inspect_event"},
    ])
    import threading

    results: dict[str, dict] = {}
    waiter = threading.Thread(target=lambda: results.setdefault("slow", rr(broker.port, f"{t}/slow", "3")))
    waiter.start()
    # While the sync function hangs, another route answers at once.
    assert rr(broker.port, f"{t}/fast", "quick", wait=2)["status_code"] == 200
    waiter.join(10)
    assert results["slow"]["status_code"] == 504
    assert "timed out after 0.5 s" in results["slow"]["body"]["error"]["message"]
    assert rr(broker.port, f"{t}/slow-async", "3")["status_code"] == 504


def test_binary_body_is_base64_in_json_replies(make_bridge, broker, topic_prefix):
    make_bridge([{"topic": f"{topic_prefix}/bin", "handler": "binary"}])
    reply = rr(broker.port, f"{topic_prefix}/bin", "x")
    import base64

    assert reply["body_encoding"] == "base64"
    assert base64.b64decode(reply["body"]) == bytes(range(256))
    assert reply["headers"]["Content-Type"] == "application/octet-stream"


def test_oversized_payload_and_huge_user_properties_are_refused(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/inspect", "handler": "inspect_event"}], limits={"max_payload": 1000})
    big = rr(broker.port, f"{t}/inspect", "x" * 1001)
    assert big["status_code"] == 413 and "1001 bytes exceeds the limit of 1000" in big["body"]["error"]["message"]
    many = [("publish", "user-property", f"k{i}", "v") for i in range(300)]
    crowded = rr(broker.port, f"{t}/inspect", "x", props=many)
    assert crowded["status_code"] == 431
    huge = rr(broker.port, f"{t}/inspect", "x", props=[("publish", "user-property", f"k{i}", "v" * 40000) for i in range(2)])
    assert huge["status_code"] == 431
    assert rr(broker.port, f"{t}/inspect", "x" * 1000)["status_code"] == 200
    assert bridge.proc.poll() is None


def test_response_topic_with_wildcards_or_dollar_is_refused(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/inspect", "handler": "inspect_event"}],
                         replies={"allowed_topics": ["replies/#", "$SYS/#"]})
    for bad in ("replies/+/x", "$SYS/replies"):
        run = subprocess.run(["mosquitto_pub", "-V", "5", "-p", str(broker.port), "-q", "1", "-t", f"{t}/inspect",
                              "-D", "publish", "response-topic", bad, "-m", "x"], capture_output=True, timeout=10)
        if run.returncode == 0:  # mosquitto_pub itself may refuse a wildcard response topic
            bridge.wait_for_log(f"response topic {bad!r} is not a valid topic to publish to")
    assert rr(broker.port, f"{t}/inspect", "ok")["status_code"] == 200


def test_payloads_are_logged_only_with_the_debug_flag(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/inspect", "handler": "inspect_event"}], logging={"log_payloads": True})
    rr(broker.port, f"{t}/inspect", "visible-payload-42")
    bridge.wait_for_log("visible-payload-42")
    assert "logging.log_payloads is on" in bridge.log()


def test_a_reply_template_outside_the_allow_list_does_not_open_it_to_requests(make_bridge, broker, topic_prefix):
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/in", "handler": "inspect_event", "reply_topic": f"out/{t}"}])
    pub(broker.port, f"{t}/in", "via template")  # the route may reply on out/...
    # ...but a request naming out/... as its response topic is still refused.
    subprocess.run(["mosquitto_pub", "-V", "5", "-p", str(broker.port), "-q", "1", "-t", f"{t}/in",
                    "-D", "publish", "response-topic", f"out/{t}", "-m", "x"], check=True, timeout=10)
    bridge.wait_for_log(f"response topic 'out/{t}' is not in replies.allowed_topics")
