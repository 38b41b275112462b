"""Thing property automation: what a route writes, its configuration, and a run from TOML."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import load_config, parse_config
from bridge.errors import BridgeError, ConfigError
from bridge.iotstudio import client as client_module
from bridge.iotstudio.automation import (
    ThingPayloadError,
    ThingWriter,
    properties_from_payload,
    properties_from_result,
)
from bridge.iotstudio.standin import StandIn
from bridge.secretstore import SecretStore
from tests.support.standin import CATEGORY, CLIENT_ID, CLIENT_SECRET, SPACE, THING

pytest_plugins = ["tests.support.standin"]

THING_TABLE = {"space": "s", "thing_id": "t", "client_id_secret": "id",
               "client_secret_secret": "secret"}


def test_payload_object_is_written() -> None:
    assert properties_from_payload(b'{"temperature": 27, "on": true}') == {"temperature": 27,
                                                                            "on": True}
    assert properties_from_payload('{"a": {"b": [1]}}') == {"a": {"b": [1]}}


@pytest.mark.parametrize("payload, words", [
    (b"27", "int"), (b"[1, 2]", "list"), (b'"on"', "str"), (b"null", "NoneType"),
    (b"{}", "empty"), (b"not json", "not JSON"), (b"\xff\xfe", "not JSON"), (b"", "not JSON"),
])
def test_anything_but_a_json_object_is_refused(payload: bytes, words: str) -> None:
    with pytest.raises(ThingPayloadError, match=words) as info:
        properties_from_payload(payload)
    assert info.value.status == 400 and isinstance(info.value, BridgeError)


@given(st.binary())
def test_payload_helper_raises_nothing_but_its_own_error(payload: bytes) -> None:
    try:
        assert isinstance(properties_from_payload(payload), dict)
    except ThingPayloadError:
        pass


@given(st.dictionaries(st.text(min_size=1), st.integers() | st.text() | st.booleans(), min_size=1))
def test_payload_helper_round_trips_objects(value: dict) -> None:
    assert properties_from_payload(json.dumps(value).encode()) == value


@pytest.mark.parametrize("status, body, expected", [
    (200, {"t": 1}, {"t": 1}),
    (201, {"t": 1}, {"t": 1}),
    (299, {"t": 1}, {"t": 1}),
    (300, {"t": 1}, None),
    (400, {"error": "bad"}, None),
    (500, {"t": 1}, None),
    (200, {}, None),
    (200, "text", None),
    (200, None, None),
    (200, [1], None),
])
def test_function_result_is_written_only_when_it_is_a_successful_object(
        status: int, body: object, expected: object) -> None:
    assert properties_from_result(status, body) == expected


def test_route_may_have_thing_without_handler() -> None:
    config = parse_config({"routes": [{"topic": "a/+", "thing": THING_TABLE}]}, Path("/cfg"))
    route = config.routes[0]
    assert route.handler is None and route.thing is not None
    assert route.thing.scopes == ("thing.update",) and route.thing.category is None
    assert route.thing.update_history is True


def test_route_needs_a_handler_or_a_thing() -> None:
    with pytest.raises(ConfigError, match="handler") as info:
        parse_config({"routes": [{"topic": "a/+"}]}, Path("/cfg"))
    assert info.value.key == "routes[0]"


@pytest.mark.parametrize("key, value", [
    ("space", "a/b"), ("thing_id", ""), ("thing_id", "x?y"), ("category", "c d"),
    ("scopes", []), ("client_id_secret", ""), ("unknown", 1),
])
def test_bad_thing_tables_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [{"topic": "a", "thing": {**THING_TABLE, key: value}}]},
                     Path("/cfg"))
    assert info.value.key.startswith("routes[0].thing")


def test_outbox_defaults_and_relative_path(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path)
    assert config.outbox.path == tmp_path / "state" / "outbox.db"
    assert (config.outbox.max_age, config.outbox.max_items) == (86400.0, 10000)
    assert config.iot_studio.max_attempts == 4 and config.iot_studio.timeout == 10.0


def test_route_from_toml_writes_the_thing(tmp_path: Path, standin: StandIn) -> None:
    """The documented configuration, end to end: payload -> outbox -> the Thing."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "iot-client-id").write_text(CLIENT_ID)
    (secrets / "iot-client-secret").write_text(CLIENT_SECRET)
    (tmp_path / "bridge.toml").write_text(f"""
[iot_studio]
api_url = "{standin.url}"
backoff_initial = 0.01

[secrets]
dir = "secrets"

[outbox]
path = "state/outbox.db"
retry_initial = 0.05

[[routes]]
topic = "sensors/+/telemetry"

[routes.thing]
space = "{SPACE}"
category = "{CATEGORY}"
thing_id = "{THING}"
client_id_secret = "iot-client-id"
client_secret_secret = "iot-client-secret"
""")
    config = load_config(tmp_path / "bridge.toml")
    target = config.routes[0].thing
    assert target is not None and config.outbox.path == tmp_path / "state" / "outbox.db"

    root = client_module.ApiClient(config.iot_studio)
    writer = ThingWriter(config.outbox, SecretStore(config.secrets.dir), root)
    try:
        writer.check(target)
        writer.start()
        writer.submit(target, properties_from_payload(b'{"temperature": 27}'))
        deadline = time.monotonic() + 10
        while writer.stats()["delivered"] < 1:
            assert time.monotonic() < deadline, writer.stats()
            time.sleep(0.01)
    finally:
        writer.close()
        root.close()
    assert standin.properties(SPACE, THING) == {"temperature": 27}
    assert any(r.path == f"/spaces/{SPACE}/categories/{CATEGORY}/things/{THING}/properties"
               for r in standin.requests)
    assert all(standin.token_status(t) == "revoked" for t in standin.grants)
