"""OpenFaaS functions end to end: real mosquitto, the real daemon, mosquitto_rr and _sub.
The result rules themselves are unit-tested in tests/test_openfaas.py."""

from __future__ import annotations

import json

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
