"""The handler contract: Event, Context and the result rules (bridge.contract)."""

from __future__ import annotations

import json

import pytest
from werkzeug.datastructures import Headers, ImmutableMultiDict

from bridge.contract import (
    JSON_TYPE,
    TEXT_TYPE,
    Context,
    Event,
    Response,
    error_body,
    error_response,
    header_map,
    normalise,
)
from bridge.errors import ResultError


# -- Event and Context -------------------------------------------------------------------------

def test_event_defaults():
    event = Event()
    assert event.body == b""
    assert event.method == "POST"
    assert event.path == "/"
    assert event.topic == ""
    assert list(event.headers.items()) == []
    assert event.query.to_dict(flat=False) == {}


def test_event_headers_are_case_insensitive_werkzeug_headers_with_repeats_kept():
    event = Event(b"x", headers=[("X-Tag", "a"), ("Content-Type", "text/csv"), ("x-tag", "b")])
    assert isinstance(event.headers, Headers)
    assert event.headers["content-type"] == "text/csv"
    assert event.headers.get("CONTENT-TYPE") == "text/csv"
    assert event.headers.getlist("X-TAG") == ["a", "b"]
    assert "x-missing" not in event.headers


def test_event_query_is_an_immutable_multidict_with_repeated_and_blank_keys():
    event = Event(query="a=1&a=2&b=&name=hello%20world")
    assert isinstance(event.query, ImmutableMultiDict)
    assert event.query.getlist("a") == ["1", "2"]
    assert event.query["a"] == "1"
    assert event.query["b"] == ""
    assert event.query["name"] == "hello world"
    with pytest.raises(TypeError):
        event.query["a"] = "3"  # type: ignore[index]


def test_event_headers_can_be_built_from_a_generator_once():
    event = Event(headers=((k, v) for k, v in [("A", "1"), ("B", "2")]))
    assert event.headers["a"] == "1"
    # Built on first use and kept: a second access still sees both headers.
    assert list(event.headers.items()) == [("A", "1"), ("B", "2")]


def test_event_repr_never_shows_the_body():
    event = Event(b"secret-payload", method="PUT", path="/a/b")
    assert repr(event) == "<Event PUT /a/b 14 bytes>"
    assert "secret" not in repr(event)


def test_context_hostname_defaults_to_localhost():
    assert Context().hostname == "localhost"
    assert Context("edge-1").hostname == "edge-1"


# -- normalise: status ------------------------------------------------------------------------

def test_no_return_is_an_empty_200():
    resp = normalise(None)
    assert (resp.status, resp.body, resp.headers, resp.data) == (200, b"", [], None)


def test_empty_dict_is_an_empty_200():
    resp = normalise({})
    assert (resp.status, resp.body, resp.headers) == (200, b"", [])


@pytest.mark.parametrize("key", ["status_code", "statusCode"])
@pytest.mark.parametrize("status", [200, 201, 404, 599])
def test_status_under_either_key(key, status):
    assert normalise({key: status}).status == status


def test_status_code_wins_over_statuscode_when_both_given():
    assert normalise({"status_code": 202, "statusCode": 404}).status == 202


@pytest.mark.parametrize(
    "value, shown",
    [(True, "True"), (False, "False"), ("200", "'200'"), (99, "99"), (600, "600"), (199, "199"),
     (200.0, "200.0"), (None, "None")],
)
@pytest.mark.parametrize("key", ["status_code", "statusCode"])
def test_invalid_status_is_a_result_error_naming_the_value(key, value, shown):
    with pytest.raises(ResultError) as info:
        normalise({key: value, "body": "x"})
    assert f"invalid {key} {shown}:" in str(info.value)


@pytest.mark.parametrize("result", ["text", b"bytes", 42, ["body", "x"], ("a", "b")])
def test_a_non_dict_result_is_a_result_error(result):
    with pytest.raises(ResultError) as info:
        normalise(result)
    assert f"function returned {type(result).__name__}, expected a dict or None" == str(info.value)


# -- normalise: body ----------------------------------------------------------------------------

def test_dict_body_is_compact_json_and_kept_as_data():
    body = {"temperature": 27, "unit": "°C", "nested": {"ok": True}}
    resp = normalise({"body": body})
    assert resp.content_type == JSON_TYPE == "application/json"
    assert json.loads(resp.body) == body
    assert resp.body == '{"temperature":27,"unit":"°C","nested":{"ok":true}}'.encode()
    assert resp.data == body


def test_body_under_response_is_used_when_body_is_absent():
    resp = normalise({"response": "from response"})
    assert resp.body == b"from response"
    assert resp.content_type == TEXT_TYPE


def test_body_wins_over_response():
    assert normalise({"body": "b", "response": "r"}).body == b"b"


def test_body_none_is_empty_even_when_response_is_set():
    # An explicit "body": None is the body; "response" is only the fallback name.
    resp = normalise({"body": None, "response": "r"})
    assert resp.body == b""


@pytest.mark.parametrize("body", [b"\x00\xff raw", bytearray(b"\x00\xff raw"), memoryview(b"\x00\xff raw")])
def test_bytes_like_body_passes_through(body):
    resp = normalise({"body": body})
    assert resp.body == b"\x00\xff raw"
    assert type(resp.body) is bytes
    assert resp.content_type == "application/octet-stream"
    assert resp.data is None


@pytest.mark.parametrize(
    "body, text",
    [("héllo", "héllo"), (42, "42"), (1.5, "1.5"), (True, "True"), ([1, "a"], "[1, 'a']"), (("x",), "('x',)")],
)
def test_other_bodies_are_str_as_utf8_text(body, text):
    resp = normalise({"body": body})
    assert resp.body == text.encode("utf-8")
    assert resp.content_type == TEXT_TYPE == "text/plain; charset=utf-8"
    assert resp.data is None


def test_str_body_with_surrogate_escapes_round_trips_the_original_bytes():
    raw = b"caf\xe9"  # latin-1, decoded by a function with errors="surrogateescape"
    resp = normalise({"body": raw.decode("utf-8", "surrogateescape")})
    assert resp.body == raw


def test_dict_body_that_cannot_be_utf8_is_a_result_error():
    with pytest.raises(ResultError) as info:
        normalise({"body": {"a": "\ud800"}})
    assert str(info.value).startswith("body is not JSON-serialisable:")


def test_str_body_that_cannot_be_utf8_is_a_result_error():
    with pytest.raises(ResultError) as info:
        normalise({"body": "bad \ud800 text"})
    assert "body" in str(info.value)


def test_missing_body_is_empty_text():
    resp = normalise({"status_code": 204})
    assert (resp.status, resp.body, resp.content_type) == (204, b"", TEXT_TYPE)


def test_dict_body_that_is_not_json_serialisable_is_a_result_error():
    with pytest.raises(ResultError) as info:
        normalise({"body": {"when": {1, 2}}})
    assert str(info.value).startswith("body is not JSON-serialisable:")


# -- normalise: headers -------------------------------------------------------------------------

def test_headers_as_a_dict():
    resp = normalise({"headers": {"X-A": "1", "X-N": 2}, "body": "x"})
    assert resp.headers == [("X-A", "1"), ("X-N", "2")]


def test_headers_as_a_list_of_pairs_keep_order_and_repeats():
    resp = normalise({"headers": [("X-A", "1"), ["X-A", "2"], ("X-B", "3")], "body": "x"})
    assert resp.headers == [("X-A", "1"), ("X-A", "2"), ("X-B", "3")]


@pytest.mark.parametrize("headers", ["X-A: 1", 5, {"X-A"}])
def test_headers_of_another_type_are_a_result_error(headers):
    with pytest.raises(ResultError) as info:
        normalise({"headers": headers})
    assert str(info.value).startswith(f"invalid headers {type(headers).__name__}:")


@pytest.mark.parametrize("item", [("X-A",), ("X-A", "1", "2"), "X-A"])
def test_a_header_that_is_not_a_pair_is_a_result_error(item):
    with pytest.raises(ResultError) as info:
        normalise({"headers": [item]})
    assert str(info.value).startswith(f"invalid header {item!r}:")


@pytest.mark.parametrize("name", ["Content-Type", "content-type", "CONTENT-TYPE"])
def test_explicit_content_type_wins_and_leaves_the_header_list(name):
    resp = normalise({"headers": {name: "text/csv", "X-A": "1"}, "body": {"a": 1}})
    assert resp.content_type == "text/csv"
    assert resp.headers == [("X-A", "1")]
    assert resp.body == b'{"a":1}'


def test_explicit_content_type_for_bytes_body():
    resp = normalise({"headers": [("Content-Type", "image/png")], "body": b"\x89PNG"})
    assert resp.content_type == "image/png"
    assert resp.headers == []


# -- error objects ------------------------------------------------------------------------------

def test_error_body_shape():
    resp = error_body(405, "method not allowed", {"allowed": ["GET"]})
    assert resp.status == 405
    assert resp.content_type == JSON_TYPE
    doc = {"error": {"status": 405, "message": "method not allowed", "details": {"allowed": ["GET"]}}}
    assert json.loads(resp.body) == doc
    assert resp.data == doc


def test_error_body_without_details_has_no_details_key():
    resp = error_body(413, "too big")
    assert json.loads(resp.body) == {"error": {"status": 413, "message": "too big"}}


def _raise_from_here():
    raise KeyError("missing")  # the line error_response falls back to


def test_error_response_without_source_file_uses_the_last_frame():
    try:
        _raise_from_here()
    except KeyError as exc:
        resp = error_response(exc)
    line = _raise_from_here.__code__.co_firstlineno + 1
    assert resp.status == 500
    assert json.loads(resp.body) == {
        "error": {
            "status": 500,
            "message": f"KeyError at line {line}: 'missing'",
            "details": {
                "exception_type": "KeyError",
                "exception_info": "'missing'",
                "exception_line_number": line,
                "exception_line_code": 'raise KeyError("missing")  # the line error_response falls back to',
            },
        }
    }


def _parse_bad_json():
    return json.loads("{")  # raises inside the json package


def test_error_response_prefers_the_last_frame_in_the_source_file():
    try:
        _parse_bad_json()
    except json.JSONDecodeError as exc:
        own = error_response(exc, source_file=__file__)
        last = error_response(exc)
        elsewhere = error_response(exc, source_file="/nowhere/else.py")
    line = _parse_bad_json.__code__.co_firstlineno + 1
    details = own.data["error"]["details"]
    assert details["exception_line_number"] == line
    assert details["exception_line_code"] == 'return json.loads("{")  # raises inside the json package'
    assert own.data["error"]["message"].startswith(f"JSONDecodeError at line {line}: Expecting property name")
    # Without a frame in the source file: the last frame of all, inside the json package.
    assert last.data["error"]["details"]["exception_line_code"] != details["exception_line_code"]
    assert elsewhere.data == last.data


def test_error_response_for_an_exception_never_raised_has_line_0():
    resp = error_response(RuntimeError("not raised"))
    assert resp.data == {
        "error": {
            "status": 500,
            "message": "RuntimeError at line 0: not raised",
            "details": {"exception_type": "RuntimeError", "exception_info": "not raised",
                        "exception_line_number": 0, "exception_line_code": ""},
        }
    }


# -- header_map ---------------------------------------------------------------------------------

def test_header_map_joins_repeated_names():
    assert header_map([("A", "1"), ("B", "2"), ("A", "3")]) == {"A": "1, 3", "B": "2"}
    assert header_map([]) == {}


def test_response_defaults():
    resp = Response()
    assert (resp.status, resp.headers, resp.body, resp.content_type, resp.data) == (200, [], b"", TEXT_TYPE, None)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_a_body_with_nan_or_infinity_is_a_clear_error_not_invalid_json(number):
    """JSON has no NaN or Infinity: json.dumps writes them anyway, and the reply document
    would not parse (JSON.parse and other strict readers refuse it)."""
    with pytest.raises(ResultError, match="body is not JSON-serialisable"):
        normalise({"body": {"value": number}})
