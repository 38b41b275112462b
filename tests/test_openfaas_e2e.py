"""OpenFaaS functions end to end: real mosquitto, the real daemon, mosquitto_rr and _sub.
The result rules themselves are unit-tested in tests/test_openfaas.py."""

from __future__ import annotations

import json

import requests

from tests.support.clients import Sub, pub, rr

HTML = "text/html; charset=utf-8"


def test_openfaas_results_reach_mqtt_as_the_template_answers_them(make_bridge, broker, topic_prefix):
    topic = f"{topic_prefix}/faas"
    make_bridge([{"topic": topic, "handler": "faas_rows"}], env={"HOSTNAME": "gw-3"})

    def ask(case: str) -> dict:
        return rr(broker.port, topic, case)

    assert ask("httpstatus") == {"status_code": 202, "headers": {"Content-Type": HTML}, "body": "queued"}
    assert ask("text") == {"status_code": 200, "headers": {"Content-Type": HTML}, "body": '{"temperature": 27}'}
    assert ask("tuple") == {"status_code": 201, "headers": {"X-Id": "7", "Content-Type": HTML}, "body": "made"}
    assert ask("list") == {"status_code": 200, "headers": {"Content-Type": "application/json"},
                           "body": [1, {"a": 1, "b": 2}]}
    missing = ask("missing")
    assert (missing["status_code"], missing["headers"]["Content-Type"]) == (400, HTML)
    assert "<title>400 Bad Request</title>" in missing["body"]
    assert ask("vars")["body"] == {"event": ["body", "headers", "method", "path", "query", "topic"],
                                   "context": "{'hostname': 'gw-3'}"}
    assert ask("none")["body"] == "None"
    assert ask("date") == {"status_code": 201, "headers": {"Content-Type": "application/json"},
                           "body": {"at": "Fri, 02 Jan 2026 00:00:00 GMT"}}


def test_reply_format_body_carries_the_templates_bytes_and_content_type(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    make_bridge([{"topic": f"{t}/faas", "handler": "faas_rows", "reply_topic": "replies/{topic}",
                  "reply_format": "body"}])
    sub = Sub(broker.port, f"replies/{t}/faas", tmp_path, extra=["-F", "%C|%P|%p"])
    try:
        pub(broker.port, f"{t}/faas", "list")
        pub(broker.port, f"{t}/faas", "text")
        lines = sub.wait_lines(3)
    finally:
        sub.close()
    # Flask's JSON: sorted keys, compact, a newline at the end (the empty second line).
    assert lines == ["application/json|status:200|" + '[1,{"a":1,"b":2}]', "",
                     HTML + "|status:200|" + json.dumps({"temperature": 27})]


def test_odd_but_valid_result_types_are_answered_and_the_worker_lives_on(make_bridge, broker, topic_prefix):
    """A header of a str subclass and an HTTPStatus status are plain values to the user.  The
    worker's result frame once carried the subclass, which the daemon refuses: the worker was
    killed, and every call on it answered 500 "killed by signal 9"."""
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/odd", "handler": "faas_odd"}], workers={"processes": 1})
    reply = rr(broker.port, f"{t}/odd", "strsub")
    assert (reply["status_code"], reply["headers"].get("X-Trace"), reply["body"]) == (200, "1", "hello"), reply
    assert rr(broker.port, f"{t}/odd", "created")["status_code"] == 201
    assert rr(broker.port, f"{t}/odd", "again")["body"] == "plain"
    assert "killed by signal" not in bridge.log() and "could not read" not in bridge.log()


def test_a_werkzeug_response_with_a_status_http_cannot_answer_gets_a_clear_error(make_bridge, broker, topic_prefix):
    """Its status is checked as a returned one is: 101 would leave an HTTP caller waiting, 0
    is no status, and each new number was once a new metrics series."""
    t = topic_prefix
    bridge = make_bridge([{"topic": f"{t}/odd", "handler": "faas_odd"}])
    for code in (101, 0, 123456):
        reply = rr(broker.port, f"{t}/odd", f"status:{code}")
        assert reply["status_code"] == 500, reply
        assert f"invalid status {code}" in reply["body"]["error"]["message"], reply
    assert rr(broker.port, f"{t}/odd", "status:202")["status_code"] == 202
    assert 'status="123456"' not in requests.get(bridge.http_url + "/metrics", timeout=10).text
