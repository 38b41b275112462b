"""The IoT Studio stand-in's endpoints and error shapes, over real HTTP (faults, control
routes and the server itself are in test_standin_faults.py)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from bridge.iotstudio import standin_routes
from bridge.iotstudio.standin import StandIn
from bridge.iotstudio.standin_state import scope_covers
from tests.support.standin import (
    CATEGORY,
    CLIENT_ID,
    CLIENT_SECRET,
    LOOSE_THING,
    READER_ID,
    READER_SECRET,
    SPACE,
    THING,
    assert_error,
    call,
    fetch_token,
)

pytest_plugins = ["tests.support.standin"]

THING_URL = f"/spaces/{SPACE}/things/{THING}"


# -- OAuth ------------------------------------------------------------------------------------


def test_token_response_shape(standin: StandIn) -> None:
    reply = requests.post(
        f"{standin.url}/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
              "client_secret": CLIENT_SECRET, "scope": "thing.read thing.update"},
        timeout=5,
    )
    assert reply.status_code == 200
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    assert set(body) == {
        "access_token", "expires_in", "id_token", "refresh_token", "scope", "token_type"}
    assert body["expires_in"] == 3600 and body["token_type"] == "bearer"
    assert body["scope"] == "thing.read thing.update"
    assert standin.token_status(body["access_token"]) == "active"


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, 400, "invalid_request"),
        ({"grant_type": "password", "client_id": CLIENT_ID}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "x"},
         401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": "ghost", "client_secret": "x"},
         401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": CLIENT_ID}, 401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": READER_ID,
          "client_secret": READER_SECRET, "scope": "thing.read thing.update"},
         400, "invalid_scope"),
        ({"grant_type": "client_credentials", "client_id": READER_ID,
          "client_secret": READER_SECRET, "scope": "thing"}, 400, "invalid_scope"),
    ],
)
def test_token_refusals(standin: StandIn, form: dict[str, str], status: int, message: str) -> None:
    reply = requests.post(f"{standin.url}/oauth2/token", data=form, timeout=5)
    details = assert_error(reply, status, message)
    assert details["error_description"]
    assert not standin.grants


def test_a_broader_scope_covers_its_verbs_and_no_scope_grants_all(standin: StandIn) -> None:
    assert scope_covers({"thing"}, "thing.update")
    assert not scope_covers({"thing.read"}, "thing")
    assert not scope_covers({"thing.read"}, "thing.update")
    assert not scope_covers({"category"}, "thing.read")
    tok = fetch_token(standin)
    assert standin.grants[tok].scopes == {"thing", "category.read"}
    assert call(standin, "PUT", f"{THING_URL}/properties", tok, json={"a": 1}).status_code == 200
    assert call(standin, "GET", f"{THING_URL}/properties", tok).status_code == 200


def test_tokens_expire_after_expires_in() -> None:
    now = [1000.0]
    seed = {"clients": [{"id": "c", "secret": "s", "scopes": ["thing"]}],
            "things": [{"space": "s", "uid": "t"}], "expires_in": 60}
    with StandIn(seed, clock=lambda: now[0]) as api:
        reply = requests.post(f"{api.url}/oauth2/token", timeout=5, data={
            "grant_type": "client_credentials", "client_id": "c", "client_secret": "s"})
        assert reply.json()["expires_in"] == 60
        tok = reply.json()["access_token"]
        now[0] += 59.9
        assert call(api, "GET", "/spaces/s/things/t/properties", tok).status_code == 200
        now[0] += 0.1
        details = assert_error(call(api, "GET", "/spaces/s/things/t/properties", tok), 401,
                               "Unauthenticated")
        assert details["error_description"] == "the token is expired"


def test_revoke(standin: StandIn) -> None:
    tok = fetch_token(standin)
    form = {"token": tok, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    assert requests.post(f"{standin.url}/oauth2/revoke", data=form, timeout=5).status_code == 200
    assert standin.token_status(tok) == "revoked"
    reply = call(standin, "GET", f"{THING_URL}/properties", tok)
    details = assert_error(reply, 401, "Unauthenticated")
    assert details["error_description"] == "the token is revoked"
    # Unknown and already revoked tokens are not errors (RFC 7009).
    for again in (tok, "never-issued"):
        reply = requests.post(f"{standin.url}/oauth2/revoke", timeout=5,
                              data={"token": again, "client_id": CLIENT_ID})
        assert reply.status_code == 200


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"client_id": CLIENT_ID}, 400, "invalid_request"),
        ({"token": "{tok}", "client_id": CLIENT_ID, "client_secret": "wrong"},
         401, "invalid_client"),
        ({"token": "{tok}", "client_id": "ghost"}, 401, "invalid_client"),
        ({"token": "{tok}", "client_id": READER_ID}, 400, "unauthorized_client"),
    ],
)
def test_revoke_refusals(standin: StandIn, form: dict[str, str], status: int, message: str) -> None:
    tok = fetch_token(standin)
    form = {k: v.format(tok=tok) for k, v in form.items()}
    reply = requests.post(f"{standin.url}/oauth2/revoke", data=form, timeout=5)
    assert_error(reply, status, message)
    assert standin.token_status(tok) == "active"


# -- authentication on the API ----------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer   ", "Basic abc", "Bearer unknown"])
def test_requests_without_a_valid_token_are_unauthenticated(
    standin: StandIn, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    reply = requests.get(f"{standin.url}{THING_URL}/properties", headers=headers, timeout=5)
    assert_error(reply, 401, "Unauthenticated")


@pytest.mark.parametrize(
    "method, path, body, scope",
    [
        ("PUT", "/properties", {"a": 1}, "thing.read"),
        ("GET", "/properties", None, "thing.update"),
        ("POST", "/actions/reboot", {"reboot": {"input": {}}}, "thing.read"),
        ("POST", "/events/alarm", {"alarm": {"data": {}}}, "thing.read"),
    ],
)
def test_a_token_without_the_needed_scope_is_unauthorized(
    standin: StandIn, method: str, path: str, body: Any, scope: str
) -> None:
    tok = fetch_token(standin, scope=scope)
    reply = call(standin, method, THING_URL + path, tok, json=body)
    details = assert_error(reply, 403, "Unauthorized")
    assert details["required_scope"] in ("thing.read", "thing.update")


# -- properties -------------------------------------------------------------------------------


def test_get_and_put_properties(standin: StandIn) -> None:
    tok = fetch_token(standin)
    assert call(standin, "GET", f"{THING_URL}/properties", tok).json() == {"temperature": 20}
    update = {"humidity": 40, "temperature": 21}
    reply = call(standin, "PUT", f"{THING_URL}/properties", tok, json=update)
    assert reply.status_code == 200
    assert reply.json() == {"temperature": 21, "humidity": 40}
    assert standin.properties(SPACE, THING) == {"temperature": 21, "humidity": 40}
    assert call(standin, "GET", f"{THING_URL}/properties/humidity", tok).json() == {"humidity": 40}
    one = call(standin, "PUT", f"{THING_URL}/properties/temperature", tok, json={"temperature": 5})
    assert (one.status_code, one.json()) == (200, {"temperature": 5})
    assert_error(call(standin, "GET", f"{THING_URL}/properties/nope", tok), 404, "Item not found")


@pytest.mark.parametrize(
    "path, data",
    [
        ("/properties", "[1, 2]"),
        ("/properties", '"text"'),
        ("/properties", "{not json"),
        ("/properties", ""),
        ("/properties/temperature", '{"humidity": 1}'),
        ("/properties/temperature", '{"temperature": 1, "humidity": 1}'),
    ],
)
def test_put_with_a_malformed_body_is_refused(standin: StandIn, path: str, data: str) -> None:
    reply = call(standin, "PUT", THING_URL + path, fetch_token(standin), data=data)
    assert_error(reply, 400, "malformed body")
    assert standin.properties(SPACE, THING) == {"temperature": 20}


def test_update_history_query(standin: StandIn) -> None:
    tok = fetch_token(standin)
    url = f"{THING_URL}/properties"
    call(standin, "PUT", url, tok, json={"temperature": 1})
    call(standin, "PUT", url, tok, json={"temperature": 2}, params={"update_history": "false"})
    call(standin, "PUT", url, tok, json={"temperature": 3}, params={"update_history": "true"})
    assert [h["properties"] for h in standin.thing(SPACE, THING).history] == [
        {"temperature": 1}, {"temperature": 3}]
    bad = call(standin, "PUT", url, tok, json={"temperature": 4},
               params={"update_history": "maybe"})
    assert_error(bad, 400, "malformed query")
    assert standin.properties(SPACE, THING) == {"temperature": 3}
    assert standin.requests[2].query == "update_history=false"


def test_category_routes_answer_only_within_the_category(standin: StandIn) -> None:
    tok = fetch_token(standin)
    good = f"/spaces/{SPACE}/categories/{CATEGORY}/things/{THING}/properties"
    assert call(standin, "PUT", good, tok, json={"temperature": 9}).json() == {"temperature": 9}
    for path in (
        f"/spaces/{SPACE}/categories/other/things/{THING}/properties",
        f"/spaces/{SPACE}/categories/{CATEGORY}/things/{LOOSE_THING}/properties",
        f"/spaces/{SPACE}/categories/other/things/{THING}/actions/reboot",
    ):
        assert_error(call(standin, "POST" if "actions" in path else "GET", path, tok,
                          json={"reboot": {"input": {}}}), 404, "Item not found")


@pytest.mark.parametrize("path", [f"/spaces/{SPACE}/things/ghost/properties",
                                  f"/spaces/nowhere/things/{THING}/properties"])
def test_unknown_things_are_not_found(standin: StandIn, path: str) -> None:
    tok = fetch_token(standin)
    assert_error(call(standin, "GET", path, tok), 404, "Item not found")
    assert_error(call(standin, "PUT", path, tok, json={"a": 1}), 404, "Item not found")


# -- actions and events -----------------------------------------------------------------------


def test_actions_and_events(standin: StandIn) -> None:
    tok = fetch_token(standin, scope="thing.update")
    action = call(standin, "POST", f"{THING_URL}/actions/reboot", tok,
                  json={"reboot": {"input": {"delay": 5}}})
    assert action.status_code == 201
    body = action.json()["reboot"]
    assert body["input"] == {"delay": 5} and body["status"] == "pending"
    assert body["timeRequested"].endswith("Z")
    assert body["href"].startswith(f"{THING_URL}/actions/reboot/")
    in_category = f"/spaces/{SPACE}/categories/{CATEGORY}/things/{THING}"
    event = call(standin, "POST", f"{in_category}/events/alarm", tok,
                 json={"alarm": {"data": {"level": 3}}})
    assert event.status_code == 201
    body = event.json()["alarm"]
    assert body["data"] == {"level": 3} and body["timestamp"].endswith("Z")
    assert body["href"].startswith(f"{THING_URL}/events/alarm/")
    state = standin.thing(SPACE, THING)
    assert state.actions == [action.json()] and state.events == [event.json()]


@pytest.mark.parametrize("kind, name, body", [
    ("actions", "reboot", {"other": {"input": {}}}),
    ("actions", "reboot", {"reboot": 5}),
    ("actions", "reboot", ["reboot"]),
    ("events", "alarm", {"alarm": {"data": 1}, "extra": {}}),
    ("events", "alarm", None),
])
def test_malformed_actions_and_events_are_refused(
    standin: StandIn, kind: str, name: str, body: Any
) -> None:
    reply = call(standin, "POST", f"{THING_URL}/{kind}/{name}", fetch_token(standin), json=body)
    assert_error(reply, 400, "malformed body")


# -- routing ----------------------------------------------------------------------------------


def test_unknown_routes_and_methods_get_the_error_object(standin: StandIn) -> None:
    tok = fetch_token(standin)
    assert_error(call(standin, "GET", "/nothing/here", tok), 404, "Not found")
    assert_error(call(standin, "GET", f"{THING_URL}/properties/", tok), 404, "Not found")
    assert_error(call(standin, "GET", f"/spaces/{SPACE}//things/{THING}/properties", tok), 404,
                 "Not found")
    reply = call(standin, "DELETE", f"{THING_URL}/properties", tok)
    assert assert_error(reply, 405, "Method not allowed")["allowed"] == ["GET", "HEAD", "PUT"]
    assert reply.headers["Allow"] == "GET, HEAD, PUT"
    assert_error(call(standin, "GET", "/oauth2/token"), 405, "Method not allowed")


def test_requests_are_recorded_without_credentials(standin: StandIn) -> None:
    tok = fetch_token(standin)
    call(standin, "PUT", f"{THING_URL}/properties", tok, json={"a": 1})
    call(standin, "GET", "/missing")
    recorded = [(r.method, r.path, r.status, r.json) for r in standin.requests]
    assert recorded == [
        ("POST", "/oauth2/token", 200, None),
        ("PUT", f"{THING_URL}/properties", 200, {"a": 1}),
        ("GET", "/missing", 404, None),
    ]
    standin.clear_requests()
    assert standin.requests == []


def test_an_internal_failure_still_answers_with_the_error_object(
    standin: StandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(api: StandIn, request: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(standin_routes, "dispatch", broken)
    assert_error(call(standin, "GET", "/anything"), 500, "Internal server error")
    assert standin.requests[-1].status == 500
    assert "stand-in failed on GET /anything" in caplog.text
