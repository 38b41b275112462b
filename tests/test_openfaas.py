"""OpenFaaS python3-http functions (``handle(event, context)``) get the result the real
template gives: its ``format_response``, then Flask's rules for what a view returns, and
werkzeug's HTTP exceptions keeping their status.  Each expectation was checked against the
template's own index.py running on Flask 3.1; docs/functions.md tables the rules.

Most tests load a real function file and go through ``bridge.functions.respond``, the path
every front end (MQTT, ``iot-bridge invoke``) takes."""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
from werkzeug.datastructures import Headers

from bridge.contract import (
    HTML_TYPE,
    IOT_STUDIO,
    JSON_TYPE,
    OPENFAAS,
    Context,
    Event,
    Response,
    openfaas_response,
    rules_for,
)
from bridge.errors import ResultError
from bridge.functions import load_function, respond, respond_async

_counter = iter(range(10**6))


@pytest.fixture(autouse=True)
def _forget_modules(tmp_path):
    saved = list(sys.path)
    yield
    sys.path[:] = saved
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def run(tmp_path: Path, source: str, *, event: Event | None = None, context: Context | None = None,
        style: str = "event, context", asynchronous: bool = False) -> Response:
    """Write ``source`` (the body of ``handle``, or a whole module when it defines it) as a
    function file, load it and answer one request with it."""
    source = textwrap.dedent(source).strip("\n")
    if "def handle" not in source:
        source = f"def handle({style}):\n" + textwrap.indent(source, "    ")
    if asynchronous:
        source = source.replace("def handle", "async def handle")
    name = f"faas_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(source + "\n")
    function = load_function(tmp_path, name)
    event = event or Event(b"payload", path="/t", topic="t", headers=[("X-Topic", "t")])
    context = context or Context("edge-1")
    if function.is_async:
        return asyncio.run(respond_async(function, event, context))
    return respond(function, lambda: function.call(event, context))


def error_message(resp: Response) -> str:
    assert resp.status == 500 and resp.content_type == JSON_TYPE
    return str(resp.data["error"]["message"])


# -- the table, row by row ------------------------------------------------------------

@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_int_subclass_status_such_as_httpstatus_gives_its_code(tmp_path, asynchronous):
    resp = run(tmp_path, """
        from http import HTTPStatus

        def handle(event, context):
            return {"statusCode": HTTPStatus.ACCEPTED, "body": "queued"}
    """, asynchronous=asynchronous)
    assert (resp.status, resp.body) == (202, b"queued")
    assert type(resp.status) is int  # a plain int in the JSON reply


def test_a_plain_str_result_is_a_200_with_that_text(tmp_path):
    resp = run(tmp_path, """
        import json

        def handle(event, context):
            return json.dumps({"temperature": 27})
    """)
    assert (resp.status, resp.body, resp.content_type) == (200, b'{"temperature": 27}', HTML_TYPE)
    assert resp.data is None  # text, not an object: the template sent it as text


@pytest.mark.parametrize("result, status, headers", [
    ('("made", 201)', 201, []),
    ('("made", 201, {"X-Id": "7"})', 201, [("X-Id", "7")]),
    ('("made", "202 Accepted", [("X-Id", "7")])', 202, [("X-Id", "7")]),
    ('("made", {"X-Id": "7"})', 200, [("X-Id", "7")]),
    ('("made", [("X-Id", "7"), ("X-Id", "8")])', 200, [("X-Id", "7"), ("X-Id", "8")]),
])
def test_tuples_follow_flasks_rules(tmp_path, result, status, headers):
    resp = run(tmp_path, f"return {result}")
    assert (resp.status, resp.headers, resp.body, resp.content_type) == (status, headers, b"made", HTML_TYPE)


def test_a_tuple_with_a_dict_body_is_json_with_its_status(tmp_path):
    resp = run(tmp_path, 'return ({"b": 1, "a": "é"}, 201)')
    assert (resp.status, resp.content_type, resp.data) == (201, JSON_TYPE, {"a": "é", "b": 1})
    assert resp.body == b'{"a":"\\u00e9","b":1}\n'  # Flask's JSON: sorted, ASCII, compact


def test_a_list_result_is_a_json_array(tmp_path):
    resp = run(tmp_path, 'return [1, "two", {"z": 1, "a": 2}]')
    assert (resp.status, resp.content_type) == (200, JSON_TYPE)
    assert resp.body == b'[1,"two",{"a":2,"z":1}]\n'
    assert resp.data == [1, "two", {"a": 2, "z": 1}]


@pytest.mark.parametrize("status, code", [('"201"', 201), ('" 201 "', 201), ('"201 Made"', 201), ("None", 200)])
def test_a_status_given_as_a_string_is_read_as_werkzeug_does(tmp_path, status, code):
    resp = run(tmp_path, f'return {{"statusCode": {status}, "body": "x"}}')
    assert (resp.status, resp.body) == (code, b"x")


@pytest.mark.parametrize("asynchronous", [False, True])
def test_reading_a_missing_query_key_is_a_400_as_werkzeug_raises_it(tmp_path, asynchronous):
    resp = run(tmp_path, 'return {"body": event.query["missing"]}', asynchronous=asynchronous)
    assert (resp.status, resp.content_type) == (400, HTML_TYPE)
    assert b"<title>400 Bad Request</title>" in resp.body


def test_vars_of_the_event_and_repr_of_the_context_dict_work(tmp_path):
    resp = run(tmp_path, 'return {"body": {"event": sorted(vars(event)), "context": repr(context.__dict__)}}')
    assert resp.status == 200, resp.data
    assert resp.data == {"event": ["body", "headers", "method", "path", "query", "topic"],
                         "context": "{'hostname': 'edge-1'}"}


def test_a_body_of_none_is_the_text_none(tmp_path):
    resp = run(tmp_path, 'return {"body": None}')
    assert (resp.status, resp.body, resp.content_type) == (200, b"None", HTML_TYPE)


def test_a_dict_body_with_dates_decimals_uuids_and_dataclasses_is_flasks_json(tmp_path):
    resp = run(tmp_path, """
        import dataclasses, datetime, decimal, uuid

        @dataclasses.dataclass
        class Point:
            x: int
            label: str

        def handle(event, context):
            return {"body": {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "day": datetime.date(2026, 1, 2),
                             "n": decimal.Decimal("1.50"), "id": uuid.UUID(int=1), "p": Point(1, "é")}}
    """)
    assert (resp.status, resp.content_type) == (200, JSON_TYPE), resp.data
    expected = {"day": "Fri, 02 Jan 2026 00:00:00 GMT", "id": "00000000-0000-0000-0000-000000000001",
                "n": "1.50", "p": {"label": "é", "x": 1}, "when": "Fri, 02 Jan 2026 03:04:05 GMT"}
    assert resp.data == expected
    assert json.loads(resp.body) == expected


def test_a_str_body_is_text_html_in_utf8(tmp_path):
    resp = run(tmp_path, 'return {"statusCode": 200, "body": "héllo"}')
    assert (resp.body, resp.content_type) == ("héllo".encode(), "text/html; charset=utf-8")


# -- more of the template's and Flask's rules ----------------------------------------------------

def test_no_return_and_an_empty_dict_are_an_empty_200_page(tmp_path):
    for source in ("return None", "return {}"):
        resp = run(tmp_path, source)
        assert (resp.status, resp.body, resp.content_type, resp.headers) == (200, b"", HTML_TYPE, [])


@pytest.mark.parametrize("body, text", [('b"raw"', b"b'raw'"), ("[1, 2]", b"[1, 2]"), ("42", b"42"),
                                        ('OrderedDict(a=1)', b"OrderedDict([('a', 1)])")])
def test_a_body_that_is_not_exactly_a_dict_is_its_str(tmp_path, body, text):
    resp = run(tmp_path, f"from collections import OrderedDict\nreturn {{'body': {body}}}")
    assert (resp.body, resp.content_type) == (text, HTML_TYPE)


def test_a_result_that_is_a_dict_subclass_is_sent_whole_as_json(tmp_path):
    resp = run(tmp_path, "from collections import OrderedDict\nreturn OrderedDict(statusCode=201, body='x')")
    assert (resp.status, resp.data) == (200, {"body": "x", "statusCode": 201})


def test_bytes_and_a_generator_are_bodies_of_a_200_page(tmp_path):
    resp = run(tmp_path, r'return b"\x00\xff"')
    assert (resp.status, resp.body, resp.content_type) == (200, b"\x00\xff", HTML_TYPE)
    resp = run(tmp_path, 'yield "a"\nyield b"b"')
    assert (resp.status, resp.body) == (200, b"ab")


def test_a_werkzeug_response_is_used_as_it_is(tmp_path):
    resp = run(tmp_path, """
        from werkzeug.wrappers import Response

        def handle(event, context):
            return Response("made", status=201, headers={"X-Id": "7"})
    """)
    assert (resp.status, resp.headers, resp.body) == (201, [("X-Id", "7")], b"made")
    assert resp.content_type == "text/plain; charset=utf-8"


def test_werkzeug_http_exceptions_keep_their_status_headers_and_page(tmp_path):
    resp = run(tmp_path, """
        from werkzeug.exceptions import MethodNotAllowed, NotFound

        def handle(event, context):
            if event.method == "POST":
                raise MethodNotAllowed(["GET"])
            raise NotFound("no such thing")
    """)
    assert (resp.status, resp.headers, resp.content_type) == (405, [("Allow", "GET")], HTML_TYPE)
    assert b"<title>405 Method Not Allowed</title>" in resp.body


def test_abort_404_keeps_its_description(tmp_path):
    resp = run(tmp_path, "from werkzeug.exceptions import abort\nabort(404, 'no such thing')")
    assert resp.status == 404
    assert b"<p>no such thing</p>" in resp.body


def test_a_text_body_keeps_repeated_headers_and_is_html_unless_told(tmp_path):
    resp = run(tmp_path, 'return {"body": "x", "headers": [("X-A", "1"), ("X-A", "2")]}')
    assert (resp.headers, resp.content_type) == ([("X-A", "1"), ("X-A", "2")], HTML_TYPE)
    resp = run(tmp_path, 'return ("x", [("X-A", "1"), ("Content-Type", "text/csv")])')
    assert (resp.headers, resp.content_type) == ([("X-A", "1")], "text/csv")


def test_a_json_body_takes_headers_by_name_as_flask_updates_them(tmp_path):
    resp = run(tmp_path, 'return {"body": {"a": 1}, "headers": [("X-A", "1"), ("X-A", "2"), ("Content-Type", "text/plain")]}')
    assert (resp.headers, resp.content_type, resp.body) == ([("X-A", "2")], "text/plain", b'{"a":1}\n')


def test_the_seed_keys_status_code_and_response_are_read_when_the_template_keys_are_absent(tmp_path):
    resp = run(tmp_path, 'return {"status_code": 201, "response": {"ok": True}}')
    assert (resp.status, resp.data) == (201, {"ok": True})
    resp = run(tmp_path, 'return {"statusCode": 202, "status_code": 201, "body": "b", "response": "r"}')
    assert (resp.status, resp.body) == (202, b"b")


@pytest.mark.parametrize("result, message", [
    ('{"statusCode": 201.0}', "invalid status 201.0: expected an int or a string such as '201'"),
    ('{"statusCode": "abc"}', "invalid status 'abc': expected a code from 200 to 999"),
    ('{"statusCode": 99}', "invalid status 99: expected a code from 200 to 999"),
    ('{"statusCode": True}', "invalid status True: expected a code from 200 to 999"),
    ('("a", 201, {}, 1)', "function returned a tuple of 4 items: expected (body, status, headers), "
                          "(body, status) or (body, headers)"),
    ("(None, 201)", "function returned a tuple whose body is None"),
    ("5", "function returned int: expected a dict, str, bytes, list, tuple, iterator, werkzeug Response or None"),
])
def test_what_flask_cannot_send_is_a_500_naming_the_value(tmp_path, result, message):
    resp = run(tmp_path, f"return {result}")
    assert error_message(resp).endswith(f"returned an invalid result: {message}")


def test_a_header_flask_refuses_is_a_500(tmp_path):
    resp = run(tmp_path, r'return {"body": "x", "headers": {"X-A": "a\nb"}}')
    assert "invalid headers" in error_message(resp)


def test_other_exceptions_are_the_error_object_with_the_line(tmp_path):
    resp = run(tmp_path, 'return {"body": event.headers["X-Missing"]}')
    # A missing header is a plain KeyError (Flask's request.headers), not a 400.
    assert error_message(resp) == "KeyError at line 2: 'X-Missing'"


def test_each_call_gets_its_own_context(tmp_path):
    source = 'context.calls = getattr(context, "calls", 0) + 1\nreturn str(context.calls)'
    shared = Context("edge-1")
    assert run(tmp_path, source, context=shared).body == b"1"
    assert run(tmp_path, source, context=shared).body == b"1"


# -- the style picks the rules ---------------------------------------------------------------------

def test_the_style_picks_the_rules(tmp_path):
    assert error_message(run(tmp_path, 'return "text"', style="req")).endswith(
        "function returned str, expected a dict or None")
    assert run(tmp_path, 'return "text"').status == 200
    resp = run(tmp_path, 'return {"body": None, "status_code": 201}', style="req")
    assert (resp.status, resp.body, resp.content_type) == (201, b"", "text/plain; charset=utf-8")
    # IoT Studio's rules: any exception is the 500 error object, a werkzeug HTTP error too.
    assert error_message(run(tmp_path, 'return {"body": req.query["missing"]}', style="req")).startswith(
        "BadRequestKeyError at line 2:")
    assert run(tmp_path, 'return {"body": event.query["missing"]}').status == 400


def test_rules_for_each_style():
    assert rules_for(True) is OPENFAAS and rules_for(False) is IOT_STUDIO
    assert openfaas_response(("x", 201)).status == 201
    with pytest.raises(ResultError):
        IOT_STUDIO.response(("x", 201))


# -- Event and Context as plain objects -------------------------------------------------------------

def test_event_is_a_plain_object_that_pickles_and_checks_headers_when_read():
    event = Event(b"x", method="PUT", path="/a", headers=[("X-A", "1")], query="q=1", topic="a")
    assert set(vars(event)) == {"body", "headers", "method", "path", "query", "topic"}
    assert isinstance(event.headers, Headers) and event.headers["x-a"] == "1"
    event.user = "ada"  # functions may keep their own things on it, as on OpenFaaS's Event
    copy = pickle.loads(pickle.dumps(Event(b"x", method="PUT", path="/a", headers=[("X-A", "1")], query="q=1")))
    assert (copy.body, copy.method, copy.path, copy.headers["X-A"], copy.query["q"]) == (b"x", "PUT", "/a", "1", "1")
    assert vars(pickle.loads(pickle.dumps(Context("h")))) == {"hostname": "h"}
    # Headers are built on first use: a value werkzeug refuses fails inside the function.
    bad = Event(b"x", headers=[("X-A", "a\nb")])
    with pytest.raises(ValueError):
        bad.headers.get("X-A")


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_a_json_body_with_nan_or_infinity_is_a_clear_error_not_invalid_json(number):
    with pytest.raises(ResultError, match="body is not JSON-serialisable"):
        openfaas_response([{"value": number}])  # a list body is JSON, as Flask answers it
