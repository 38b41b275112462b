"""MQTT message <-> handler contract (bridge.codec)."""

from __future__ import annotations

import base64
import json

import pytest
from werkzeug.datastructures import Headers, ImmutableMultiDict

from bridge.codec import check_request, encode_reply, event_from_message, reply_document
from bridge.contract import Response, error_body, normalise
from bridge.message import Inbound, Outbound


def _msg(payload: bytes = b"{}", topic: str = "sensors/room1/temp", **kw) -> Inbound:
    return Inbound(topic, payload, **kw)


# -- check_request ------------------------------------------------------------------------------

def test_acceptable_message_has_no_rejection():
    assert check_request(_msg(b"x" * 10), max_payload=10) is None
    assert check_request(_msg(b"", user_properties=[("method", "get")]), max_payload=0) is None


def test_oversized_payload_is_413():
    resp = check_request(_msg(b"x" * 11), max_payload=10)
    assert resp is not None
    assert resp.status == 413
    assert json.loads(resp.body) == {
        "error": {"status": 413, "message": "payload of 11 bytes exceeds the limit of 10"}
    }


@pytest.mark.parametrize("method", ["FETCH", "connect", "", "GETX"])
def test_unknown_method_is_405(method):
    resp = check_request(_msg(user_properties=[("method", method)]), max_payload=1024)
    assert resp is not None
    assert resp.status == 405
    error = json.loads(resp.body)["error"]
    assert error["status"] == 405
    assert error["message"] == f"method {method!r} not allowed; use one of DELETE, GET, PATCH, POST, PUT"


def test_405_message_truncates_a_long_method():
    resp = check_request(_msg(user_properties=[("method", "X" * 100)]), max_payload=1024)
    assert resp is not None and resp.status == 405
    assert f"method {'X' * 32!r} not allowed" in resp.data["error"]["message"]


@pytest.mark.parametrize("method", ["GET", "get", "Put", "PATCH", "delete", "POST"])
def test_known_methods_any_case_are_accepted(method):
    assert check_request(_msg(user_properties=[("method", method)]), max_payload=1024) is None


# -- event_from_message -------------------------------------------------------------------------

def test_event_from_a_v311_message():
    event = event_from_message(_msg(b'{"t": 21.5}', topic="sensors/room1/temp"))
    assert event.body == b'{"t": 21.5}'
    assert event.method == "POST"
    assert event.path == "/sensors/room1/temp"
    assert event.topic == "sensors/room1/temp"
    assert isinstance(event.headers, Headers)
    assert list(event.headers.items()) == [("X-Topic", "sensors/room1/temp"), ("Content-Length", "11")]
    assert isinstance(event.query, ImmutableMultiDict)
    assert event.query.to_dict(flat=False) == {}


def test_event_from_a_v5_message_with_properties():
    msg = _msg(
        b"abc",
        topic="a/b",
        content_type="text/csv",
        user_properties=[("method", "put"), ("query", "x=1&x=2&y="), ("X-Tag", "one"), ("x-tag", "two")],
    )
    event = event_from_message(msg)
    assert event.method == "PUT"
    assert event.path == "/a/b"
    assert event.headers["content-type"] == "text/csv"
    assert event.headers["x-topic"] == "a/b"
    assert event.headers["content-length"] == "3"
    assert event.headers.getlist("X-TAG") == ["one", "two"]
    assert event.query.getlist("x") == ["1", "2"]
    assert event.query["y"] == ""
    # Every user property is a header, method and query included.
    assert event.headers["method"] == "put"
    assert event.headers["query"] == "x=1&x=2&y="


@pytest.mark.parametrize("method, expected", [("get", "GET"), ("Delete", "DELETE"), ("PATCH", "PATCH"),
                                              ("post", "POST")])
def test_method_from_user_property(method, expected):
    assert event_from_message(_msg(user_properties=[("method", method)])).method == expected


def test_method_defaults_to_post_with_other_user_properties():
    event = event_from_message(_msg(user_properties=[("X-A", "1")]))
    assert event.method == "POST"
    assert event.query.to_dict() == {}


def test_first_method_and_query_properties_are_used():
    msg = _msg(user_properties=[("method", "GET"), ("method", "DELETE"), ("query", "a=1"), ("query", "a=2")])
    event = event_from_message(msg)
    assert event.method == "GET"
    assert event.query.getlist("a") == ["1"]


def test_event_does_not_share_the_message_user_property_list():
    props = [("X-A", "1")]
    msg = _msg(content_type="text/plain", user_properties=props)
    event_from_message(msg)
    assert msg.user_properties == [("X-A", "1")]


# -- reply_document -----------------------------------------------------------------------------

def test_reply_document_keeps_a_dict_body_as_an_object():
    doc = reply_document(normalise({"status_code": 201, "headers": {"X-A": "1"}, "body": {"ok": True}}))
    assert doc == {"status_code": 201, "headers": {"X-A": "1", "Content-Type": "application/json"},
                   "body": {"ok": True}}


def test_reply_document_of_an_empty_200():
    assert reply_document(normalise(None)) == {
        "status_code": 200, "headers": {"Content-Type": "text/plain; charset=utf-8"}, "body": ""}


def test_reply_document_text_body():
    doc = reply_document(normalise({"body": "héllo"}))
    assert doc["body"] == "héllo"
    assert "body_encoding" not in doc


def test_reply_document_utf8_bytes_are_text():
    doc = reply_document(normalise({"body": "ünïcode".encode()}))
    assert doc["body"] == "ünïcode"
    assert doc["headers"]["Content-Type"] == "application/octet-stream"
    assert "body_encoding" not in doc


def test_reply_document_non_utf8_bytes_are_base64():
    raw = b"\x89PNG\r\n\x1a\n\xff\x00"
    doc = reply_document(normalise({"body": raw}))
    assert doc["body_encoding"] == "base64"
    assert base64.b64decode(doc["body"]) == raw
    assert doc["body"] == base64.b64encode(raw).decode()


def test_reply_document_joins_repeated_headers():
    doc = reply_document(normalise({"headers": [("X-A", "1"), ("X-A", "2")], "body": "x"}))
    assert doc["headers"] == {"X-A": "1, 2", "Content-Type": "text/plain; charset=utf-8"}


def test_reply_document_of_an_error_body_embeds_the_error_object():
    doc = reply_document(error_body(405, "nope"))
    assert doc == {"status_code": 405, "headers": {"Content-Type": "application/json"},
                   "body": {"error": {"status": 405, "message": "nope"}}}


# -- encode_reply -------------------------------------------------------------------------------

def test_encode_reply_json_format():
    resp = normalise({"status_code": 202, "headers": {"X-A": "1"}, "body": {"n": 1}})
    out = encode_reply(resp, "json", "replies/a", 1, b"corr-1")
    assert isinstance(out, Outbound)
    assert (out.topic, out.qos, out.correlation_data, out.content_type) == ("replies/a", 1, b"corr-1", "application/json")
    assert out.user_properties == []
    assert json.loads(out.payload) == {"status_code": 202,
                                       "headers": {"X-A": "1", "Content-Type": "application/json"},
                                       "body": {"n": 1}}


def test_encode_reply_json_keeps_non_ascii_as_utf8():
    out = encode_reply(normalise({"body": "°C"}), "json", "r", 0, None)
    assert "°C".encode() in out.payload
    assert out.correlation_data is None


def test_encode_reply_body_format():
    resp = normalise({"headers": [("X-A", "1"), ("X-A", "2")], "body": "plain text"})
    out = encode_reply(resp, "body", "replies/b", 2, b"c")
    assert out.payload == b"plain text"
    assert out.content_type == "text/plain; charset=utf-8"
    assert out.user_properties == [("status", "200"), ("X-A", "1"), ("X-A", "2")]
    assert (out.topic, out.qos, out.correlation_data) == ("replies/b", 2, b"c")


def test_encode_reply_body_format_carries_raw_bytes_and_the_status():
    resp = Response(status=500, body=b"\xff\xfe", content_type="application/octet-stream")
    out = encode_reply(resp, "body", "r", 0, None)
    assert out.payload == b"\xff\xfe"
    assert out.content_type == "application/octet-stream"
    assert out.user_properties == [("status", "500")]


def test_the_bridges_own_headers_win_over_user_properties_of_those_names():
    msg = _msg(b"abc", topic="sensors/t", content_type="text/csv",
               user_properties=[("X-Topic", "admin/secret"), ("content-length", "999"), ("Content-Type", "x/evil"),
                                ("X-Tag", "kept")])
    headers = event_from_message(msg).headers
    assert headers.getlist("X-Topic") == ["sensors/t"]
    assert headers.getlist("Content-Length") == ["3"]
    assert headers.getlist("Content-Type") == ["text/csv"]
    assert headers["X-Tag"] == "kept"


def test_a_content_type_user_property_stays_when_the_message_has_none():
    headers = event_from_message(_msg(b"{}", user_properties=[("Content-Type", "application/json")])).headers
    assert headers.getlist("Content-Type") == ["application/json"]


@pytest.mark.parametrize("resp", [
    Response(200, [("X-Big", "v" * 70000)], b"x"),
    Response(200, [("X-Bad", "\udcff")], b"x"),
    Response(200, [], b"x", content_type="text/\ud800"),
])
def test_a_reply_that_cannot_travel_as_mqtt_properties_is_refused_by_the_encoder(resp):
    with pytest.raises(ValueError):
        encode_reply(resp, "body", "out/t", 1, None)


def test_json_replies_with_the_same_headers_and_with_others_each_carry_their_own():
    first = json.loads(encode_reply(normalise({"headers": {"X-A": "1"}, "body": "a"}), "json", "t", 0, None).payload)
    again = json.loads(encode_reply(normalise({"headers": {"X-A": "1"}, "body": "b"}), "json", "t", 0, None).payload)
    other = json.loads(encode_reply(normalise({"headers": {"X-A": "2"}, "body": "c"}), "json", "t", 0, None).payload)
    listed = json.loads(encode_reply(Response(200, [["X-B", "3"]], b"d"), "json", "t", 0, None).payload)  # type: ignore[list-item]
    assert first["headers"] == again["headers"] == {"X-A": "1", "Content-Type": "text/plain; charset=utf-8"}
    assert other["headers"]["X-A"] == "2"
    assert listed["headers"]["X-B"] == "3"
    assert (first["body"], again["body"], other["body"]) == ("a", "b", "c")
