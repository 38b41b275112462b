"""The swx package against the IoT Studio stand-in over real HTTP."""

from __future__ import annotations

import logging
import socket

import pytest
import requests

import swx
from bridge.errors import ApiError
from bridge.iotstudio.standin import StandIn
from swx.auth.token import Token, get_token, revoke_token
from swx.config import api_url
from swx.errors import OAuth2Error, ResponseError, TokenRevokeError, error_from_response
from tests.support.standin import (
    CATEGORY,
    CLIENT_ID,
    CLIENT_SECRET,
    READER_ID,
    READER_SECRET,
    SPACE,
    THING,
    bearer,
)

pytest_plugins = ["tests.support.standin"]

pytestmark = pytest.mark.usefixtures("clean_environment")


def _properties_url(api: StandIn) -> str:
    return f"{api.url}/spaces/{SPACE}/categories/{CATEGORY}/things/{THING}/properties"


def test_token_is_revoked_at_the_end_of_the_with_block(standin: StandIn) -> None:
    with get_token(CLIENT_ID, CLIENT_SECRET, ["thing.update"], host=standin.url) as token:
        assert standin.token_status(token.access_token) == "active"
        reply = requests.put(
            _properties_url(standin), headers=bearer(token), json={"temperature": 27}
        )
        assert reply.status_code == 200
        assert reply.json() == {"temperature": 27}

    assert token.revoked
    assert standin.token_status(token.access_token) == "revoked"
    seen = [(r.method, r.path, r.status) for r in standin.requests]
    assert ("POST", "/oauth2/revoke", 200) in seen
    after = requests.put(_properties_url(standin), headers=bearer(token), json={"temperature": 1})
    assert after.status_code == 401
    assert standin.properties(SPACE, THING) == {"temperature": 27}


def test_token_is_revoked_when_the_block_raises(standin: StandIn) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with get_token(CLIENT_ID, CLIENT_SECRET, ["thing.read"], host=standin.url) as token:
            raise RuntimeError("boom")
    assert standin.token_status(token.access_token) == "revoked"


def test_a_failing_revoke_does_not_mask_the_blocks_exception(
    standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    standin.faults.fail_next(1, status=503, path="/oauth2/revoke")
    with pytest.raises(KeyError):
        with get_token(CLIENT_ID, CLIENT_SECRET, ["thing.read"], host=standin.url) as token:
            raise KeyError("from the block")
    assert standin.token_status(token.access_token) == "active"
    assert "could not revoke" in caplog.text


def test_a_failing_revoke_raises_when_the_block_succeeded(standin: StandIn) -> None:
    standin.faults.fail_next(1, status=503, path="/oauth2/revoke")
    with pytest.raises(TokenRevokeError) as caught:
        with get_token(CLIENT_ID, CLIENT_SECRET, ["thing.read"], host=standin.url) as token:
            pass
    assert caught.value.status_code == 503
    assert caught.value.transient
    assert not token.revoked
    token.revoke()  # a second try succeeds; a third does nothing
    token.revoke()
    assert standin.token_status(token.access_token) == "revoked"
    assert [r.status for r in standin.requests if r.path == "/oauth2/revoke"] == [503, 200]


def test_wrong_secret_raises_oauth2_error_from_the_error_object(standin: StandIn) -> None:
    with pytest.raises(OAuth2Error) as caught:
        get_token(CLIENT_ID, "wrong&secret", ["thing.read"], host=standin.url)
    error = caught.value
    assert isinstance(error, ResponseError) and isinstance(error, ApiError)
    assert error.status_code == error.status == 401
    assert error.message == "invalid_client"
    assert error.details["error_description"]
    assert not error.transient
    assert "wrong&secret" not in str(error) + repr(error)


def test_a_refused_scope_is_surfaced_with_its_status(standin: StandIn) -> None:
    with pytest.raises(OAuth2Error) as caught:
        get_token(READER_ID, READER_SECRET, ["thing.update"], host=standin.url)
    assert caught.value.status_code == 400
    assert caught.value.message == "invalid_scope"
    assert "thing.update" in str(caught.value)


@pytest.mark.parametrize(
    "secret",
    ["a&b", "k=v", "p+q", "with space", "%41%", "semi;colon#hash", "ünïcødé €", "&=+ %"],
)
def test_secrets_with_form_metacharacters_are_url_encoded(secret: str) -> None:
    seed = {"clients": [{"id": "odd client&id", "secret": secret, "scopes": ["thing"]}]}
    with StandIn(seed) as api:
        token = get_token("odd client&id", secret, ["thing.read", "thing.update"], host=api.url)
        assert token.scope == "thing.read thing.update"
        revoke_token(token, "odd client&id", secret)
        assert api.token_status(token.access_token) == "revoked"


def test_unknown_fields_in_the_token_response_are_ignored() -> None:
    seed = {
        "clients": [{"id": "c", "secret": "s", "scopes": ["thing"]}],
        "token_extra": {"jti": "abc", "not_before": 0, "expires_in": None, "token_type": None},
    }
    with StandIn(seed) as api:
        token = get_token("c", "s", ["thing"], host=api.url)
    assert token.expires_in == 3600  # absent (null) lifetime: the documented default
    assert token.token_type == "bearer"
    assert not hasattr(token, "jti")


def test_token_fields_str_and_repr(standin: StandIn) -> None:
    token = get_token(CLIENT_ID, CLIENT_SECRET, "thing.read", host=standin.url)
    assert token.host == standin.url
    assert token.expires_in == 3600
    assert token.scope == "thing.read"
    assert token.token_type == "bearer"
    assert str(token) == token.access_token
    shown = repr(token)
    assert token.access_token not in shown and CLIENT_SECRET not in shown


def test_revoke_token_accepts_a_string_and_works_without_the_secret(standin: StandIn) -> None:
    token = get_token(CLIENT_ID, CLIENT_SECRET, ["thing.read"], host=standin.url)
    revoke_token(token.access_token, CLIENT_ID, host=standin.url)
    assert standin.token_status(token.access_token) == "revoked"


def test_revoke_token_with_a_wrong_secret_raises(standin: StandIn) -> None:
    token = get_token(CLIENT_ID, CLIENT_SECRET, ["thing.read"], host=standin.url)
    with pytest.raises(TokenRevokeError) as caught:
        revoke_token(token, CLIENT_ID, "not-it")
    assert caught.value.status_code == 401 and caught.value.message == "invalid_client"
    assert standin.token_status(token.access_token) == "active"


def test_a_token_built_without_credentials_cannot_be_revoked() -> None:
    token = Token(host="http://127.0.0.1:9", access_token="abc")
    with pytest.raises(TokenRevokeError) as caught:
        token.revoke()
    assert caught.value.status_code == 0
    assert not caught.value.transient


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_api_gives_status_0() -> None:
    with pytest.raises(OAuth2Error) as caught:
        get_token("c", "s", ["thing"], host=f"http://127.0.0.1:{_closed_port()}", timeout=2)
    assert caught.value.status_code == 0
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_every_call_has_a_timeout(standin: StandIn) -> None:
    standin.faults.delay_next(1, seconds=5, path="/oauth2/token")
    with pytest.raises(OAuth2Error, match="timed out") as caught:
        get_token(CLIENT_ID, CLIENT_SECRET, ["thing"], host=standin.url, timeout=0.2)
    assert caught.value.status_code == 0


def test_a_rate_limited_token_request_is_transient(standin: StandIn) -> None:
    standin.faults.rate_limit_next(1, retry_after=2)
    with pytest.raises(OAuth2Error) as caught:
        get_token(CLIENT_ID, CLIENT_SECRET, ["thing"], host=standin.url)
    assert caught.value.status_code == 429
    assert caught.value.transient


def test_a_non_json_error_body_still_gives_a_useful_error() -> None:
    response = requests.Response()
    response.status_code = 502
    response.reason = "Bad Gateway"
    response._content = b"<html><body>upstream\n  connect error</body></html>"
    error = error_from_response(response, OAuth2Error)
    assert isinstance(error, OAuth2Error)
    assert error.status_code == 502
    assert "Bad Gateway" in error.message and "upstream connect error" in error.message


def test_the_plain_oauth2_error_shape_is_understood() -> None:
    response = requests.Response()
    response.status_code = 400
    response._content = b'{"error": "invalid_grant", "error_description": "nope"}'
    error = error_from_response(response)
    assert (error.status_code, error.message, error.details) == (
        400,
        "invalid_grant",
        {"error_description": "nope"},
    )


def test_default_host_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert api_url() == "https://api.swx.altairone.com"
    monkeypatch.setenv("SWX_API_URL", "http://from-env/")
    assert api_url() == "http://from-env"
    swx.configure("http://from-config/")
    assert api_url() == "http://from-config"
    assert api_url("http://explicit/") == "http://explicit"
    swx.configure(None)
    assert api_url() == "http://from-env"


def test_get_token_uses_the_configured_then_the_environment_host(
    standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    swx.configure(standin.url)
    monkeypatch.setenv("SWX_API_URL", f"http://127.0.0.1:{_closed_port()}")
    with get_token(CLIENT_ID, CLIENT_SECRET, ["thing"]) as token:
        assert token.host == standin.url
    swx.configure(None)
    monkeypatch.setenv("SWX_API_URL", standin.url)
    with get_token(CLIENT_ID, CLIENT_SECRET, ["thing"]) as token:
        assert token.host == standin.url
    assert [r.path for r in standin.requests].count("/oauth2/revoke") == 2


def test_no_secret_or_token_reaches_the_logs(
    standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.faults.fail_next(1, status=503, path="/oauth2/revoke")
    with pytest.raises(ValueError):
        with get_token(CLIENT_ID, CLIENT_SECRET, ["thing"], host=standin.url) as token:
            raise ValueError("x")
    with pytest.raises(OAuth2Error) as caught:
        get_token(CLIENT_ID, CLIENT_SECRET + "x", ["thing"], host=standin.url)
    assert caplog.records  # the failed revoke was logged
    for text in (caplog.text, str(caught.value), repr(caught.value)):
        assert CLIENT_SECRET not in text
        assert token.access_token not in text
