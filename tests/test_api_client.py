"""The IoT Studio API client against the stand-in, over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge import secretstore
from bridge.config import IotStudioConfig
from bridge.errors import ApiError, ConfigError
from bridge.iotstudio import client as client_module
from bridge.iotstudio.client import ApiClient, thing_path
from bridge.iotstudio.standin import StandIn
from tests.support.standin import (
    CATEGORY,
    CLIENT_ID,
    CLIENT_SECRET,
    LOOSE_THING,
    READER_ID,
    READER_SECRET,
    SPACE,
    THING,
)

pytest_plugins = ["tests.support.standin"]


class FakeClock:
    """Monotonic seconds that only move when told to; shared by the client and the stand-in."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(standin: StandIn) -> FakeClock:
    fake = FakeClock()
    standin.clock = fake  # token expiry at the stand-in follows the same clock
    return fake


def settings(url: str, **overrides: object) -> IotStudioConfig:
    values = dict(api_url=url, timeout=2.0, max_attempts=4, backoff_initial=0.01,
                  backoff_max=0.05, retry_after_max=5.0)
    values.update(overrides)
    return IotStudioConfig(**values)


@pytest.fixture
def root(standin: StandIn, clock: FakeClock):
    client = ApiClient(settings(standin.url), clock=clock)
    yield client
    client.close()


@pytest.fixture
def api(root: ApiClient) -> ApiClient:
    return root.with_credentials(CLIENT_ID, CLIENT_SECRET, ["thing.read", "thing.update"])


def calls(standin: StandIn, method: str, suffix: str) -> list:
    return [r for r in standin.requests if r.method == method and r.path.endswith(suffix)]


def test_properties_roundtrip_without_and_with_category(api: ApiClient, standin: StandIn) -> None:
    assert api.get_properties(SPACE, LOOSE_THING) == {"on": False}
    assert api.update_properties(SPACE, LOOSE_THING, {"on": True}) == {"on": True}
    assert standin.properties(SPACE, LOOSE_THING) == {"on": True}

    assert api.get_properties(SPACE, THING, category=CATEGORY) == {"temperature": 20}
    api.update_properties(SPACE, THING, {"temperature": 27}, category=CATEGORY,
                          update_history=False)
    assert standin.properties(SPACE, THING) == {"temperature": 27}
    put = calls(standin, "PUT", "/properties")[-1]
    assert put.path == f"/spaces/{SPACE}/categories/{CATEGORY}/things/{THING}/properties"
    assert put.query == "update_history=false" and put.json == {"temperature": 27}
    assert standin.thing(SPACE, THING).history == []


def test_events_and_actions_bodies(api: ApiClient, standin: StandIn) -> None:
    event = api.create_event(SPACE, LOOSE_THING, "overheat", {"temperature": 90})
    assert event["overheat"]["data"] == {"temperature": 90}
    action = api.create_action(SPACE, THING, "reboot", {"delay": 5}, category=CATEGORY)
    assert action["reboot"]["status"] == "pending"
    posts = [r for r in standin.requests if r.method == "POST" and r.path.startswith("/spaces")]
    assert [(r.path, r.json) for r in posts] == [
        (f"/spaces/{SPACE}/things/{LOOSE_THING}/events/overheat",
         {"overheat": {"data": {"temperature": 90}}}),
        (f"/spaces/{SPACE}/categories/{CATEGORY}/things/{THING}/actions/reboot",
         {"reboot": {"input": {"delay": 5}}}),
    ]


def test_token_is_fetched_once_and_reused(api: ApiClient, standin: StandIn) -> None:
    for _ in range(3):
        api.get_properties(SPACE, THING)
    assert len(calls(standin, "POST", "/oauth2/token")) == 1


def test_retries_503_then_succeeds(api: ApiClient, standin: StandIn) -> None:
    standin.faults.fail_next(2, status=503, path="*/properties")
    api.update_properties(SPACE, THING, {"temperature": 30})
    assert [r.status for r in calls(standin, "PUT", "/properties")] == [503, 503, 200]


def test_gives_up_after_max_attempts_with_typed_error(api: ApiClient, standin: StandIn) -> None:
    standin.faults.fail_next(10, status=503, path="*/properties")
    with pytest.raises(ApiError) as info:
        api.update_properties(SPACE, THING, {"temperature": 30})
    assert info.value.status == 503 and info.value.message == "Service unavailable"
    assert info.value.details == {"injected": True} and info.value.transient
    assert len(calls(standin, "PUT", "/properties")) == 4  # max_attempts


def test_429_waits_for_retry_after(api: ApiClient, standin: StandIn) -> None:
    standin.faults.rate_limit_next(1, retry_after=0.4, path="*/properties")
    started = time.monotonic()
    api.update_properties(SPACE, THING, {"temperature": 31})
    assert time.monotonic() - started >= 0.4  # not the 0.01 s exponential backoff
    assert [r.status for r in calls(standin, "PUT", "/properties")] == [429, 200]


def test_retry_after_is_capped(standin: StandIn, clock: FakeClock) -> None:
    with ApiClient(settings(standin.url, retry_after_max=0.05), clock=clock) as root:
        api = root.with_credentials(CLIENT_ID, CLIENT_SECRET)
        standin.faults.rate_limit_next(1, retry_after=3600, path="*/properties")
        started = time.monotonic()
        api.update_properties(SPACE, THING, {"temperature": 31})
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_other_4xx_are_not_retried(api: ApiClient, standin: StandIn, status: int) -> None:
    standin.faults.fail_next(1, status=status, message="nope", path="*/properties")
    with pytest.raises(ApiError) as info:
        api.update_properties(SPACE, THING, {"temperature": 1})
    assert (info.value.status, info.value.message, info.value.transient) == (status, "nope", False)
    assert len(calls(standin, "PUT", "/properties")) == 1


def test_real_errors_carry_the_error_object(root: ApiClient, api: ApiClient,
                                            standin: StandIn) -> None:
    with pytest.raises(ApiError) as info:
        api.get_properties(SPACE, "no-such-thing")
    assert (info.value.status, info.value.message) == (404, "Item not found")

    reader = root.with_credentials(READER_ID, READER_SECRET, ["thing.read"])
    with pytest.raises(ApiError) as info:
        reader.update_properties(SPACE, THING, {"temperature": 1})
    assert info.value.status == 403 and info.value.details == {"required_scope": "thing.update"}

    with pytest.raises(ApiError) as info:
        root.with_credentials(CLIENT_ID, "wrong").get_properties(SPACE, THING)
    assert (info.value.status, info.value.message) == (401, "invalid_client")
    assert "error_description" in info.value.details
    refused = [r for r in calls(standin, "POST", "/oauth2/token") if r.status == 401]
    assert len(refused) == 1  # a refused client is not retried


def test_no_response_is_status_0_and_bounded(api: ApiClient, standin: StandIn) -> None:
    api.get_properties(SPACE, THING)  # token first, so only the API call fails
    standin.faults.set_down(True, mode="close")
    with pytest.raises(ApiError) as info:
        api.get_properties(SPACE, THING)
    assert info.value.status == 0 and info.value.transient
    assert [r.status for r in calls(standin, "GET", "/properties")][1:] == [0, 0, 0, 0]


def test_unreachable_api_is_status_0() -> None:
    with ApiClient(settings("http://127.0.0.1:9", max_attempts=2)) as root:
        with pytest.raises(ApiError) as info:
            root.with_credentials(CLIENT_ID, CLIENT_SECRET).get_properties(SPACE, THING)
    assert info.value.status == 0


def test_timeout_is_retried(standin: StandIn, clock: FakeClock) -> None:
    with ApiClient(settings(standin.url, timeout=0.3), clock=clock) as root:
        api = root.with_credentials(CLIENT_ID, CLIENT_SECRET)
        api.get_properties(SPACE, THING)
        standin.faults.delay_next(1, seconds=2.0, path="*/properties")
        started = time.monotonic()
        assert api.get_properties(SPACE, THING) == {"temperature": 20}
        assert time.monotonic() - started < 1.5


def test_token_refreshed_before_expiry(api: ApiClient, standin: StandIn, clock: FakeClock) -> None:
    api.get_properties(SPACE, THING)
    clock.now += 3600 - 5  # still valid at the stand-in, but inside the 10 s margin
    api.get_properties(SPACE, THING)
    assert len(calls(standin, "POST", "/oauth2/token")) == 2
    assert [r.status for r in calls(standin, "GET", "/properties")] == [200, 200]


def test_short_lived_token_is_renewed_within_a_quarter_of_its_life(
    api: ApiClient, standin: StandIn, clock: FakeClock
) -> None:
    standin.expires_in = 20
    api.get_properties(SPACE, THING)
    clock.now += 14  # margin is min(10, 20 / 4) = 5 s: still fresh
    api.get_properties(SPACE, THING)
    clock.now += 2
    api.get_properties(SPACE, THING)
    assert len(calls(standin, "POST", "/oauth2/token")) == 2


def test_refetches_token_once_on_401(api: ApiClient, standin: StandIn) -> None:
    api.get_properties(SPACE, THING)
    standin.faults.expire_tokens()
    assert api.get_properties(SPACE, THING) == {"temperature": 20}
    assert [r.status for r in calls(standin, "GET", "/properties")] == [200, 401, 200]
    assert len(calls(standin, "POST", "/oauth2/token")) == 2


def test_persistent_401_is_refetched_only_once(api: ApiClient, standin: StandIn) -> None:
    standin.faults.fail_next(5, status=401, message="Unauthenticated", path="*/properties")
    with pytest.raises(ApiError) as info:
        api.get_properties(SPACE, THING)
    assert info.value.status == 401
    assert len(calls(standin, "GET", "/properties")) == 2
    assert len(calls(standin, "POST", "/oauth2/token")) == 2


def test_close_revokes_tokens(root: ApiClient, api: ApiClient, standin: StandIn) -> None:
    api.get_properties(SPACE, THING)
    root.with_credentials(READER_ID, READER_SECRET, ["thing.read"]).get_properties(SPACE, THING)
    tokens = list(standin.grants)
    assert [standin.token_status(t) for t in tokens] == ["active", "active"]
    root.close()
    assert [standin.token_status(t) for t in tokens] == ["revoked", "revoked"]
    with pytest.raises(ApiError) as info:
        api.get_properties(SPACE, THING)
    assert info.value.status == 0
    root.close()  # idempotent


def test_unbound_client_needs_credentials(root: ApiClient) -> None:
    with pytest.raises(ConfigError):
        root.get_properties(SPACE, THING)


def test_thing_path_quotes_segments() -> None:
    assert thing_path("a b", "t/1") == "/spaces/a%20b/things/t%2F1"
    assert thing_path("s", "t", "C") == "/spaces/s/categories/C/things/t"


def test_function_helper_reads_credentials_from_secrets(
    standin: StandIn, tmp_path: Path, clean_environment: None
) -> None:
    (tmp_path / "iot-client-id").write_text(CLIENT_ID + "\n")
    (tmp_path / "iot-client-secret").write_text(CLIENT_SECRET + "\n")
    secretstore.configure(tmp_path)
    client_module.configure(settings(standin.url))
    try:
        iot = client_module.api(client_id_secret="iot-client-id",
                                client_secret_secret="iot-client-secret")
        iot.update_properties(SPACE, THING, {"temperature": 42})
        assert standin.properties(SPACE, THING) == {"temperature": 42}
        with pytest.raises(secretstore.SecretError):
            client_module.api(client_id_secret="missing", client_secret_secret="iot-client-secret")
        token = next(iter(standin.grants))
    finally:
        client_module.shutdown()
    assert standin.token_status(token) == "revoked"
