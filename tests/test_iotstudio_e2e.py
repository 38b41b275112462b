"""IoT Studio end to end: MQTT message -> function or no-code route -> the API stand-in over HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.support.clients import pub, rr
from tests.support.waiting import wait_for
from tests.support.standin import CATEGORY, CLIENT_ID, CLIENT_SECRET, SPACE, THING

pytest_plugins = ["tests.support.standin"]


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir()
    for name, value in {"thing_client_id": CLIENT_ID, "thing_client_secret": CLIENT_SECRET}.items():
        (d / name).write_text(value + "\n")
        os.chmod(d / name, 0o600)
    return d


THING_ROUTE = {"space": SPACE, "category": CATEGORY, "thing_id": THING,
               "client_id_secret": "thing_client_id", "client_secret_secret": "thing_client_secret"}


def test_seed_function_updates_a_thing_and_revokes_its_token(make_bridge, broker, topic_prefix, standin, secrets_dir):
    bridge = make_bridge([{"topic": f"{topic_prefix}/update", "handler": "update_thing"}],
                         handlers_dir=EXAMPLES, iot_studio={"api_url": standin.url},
                         secrets={"dir": str(secrets_dir)})
    reply = rr(broker.port, f"{topic_prefix}/update", '{"temperature": 31}')
    assert reply == {"status_code": 200, "headers": {"Content-Type": "text/plain; charset=utf-8"},
                     "body": "Property updated!"}
    assert standin.properties(SPACE, THING)["temperature"] == 31
    paths = [(r.method, r.path, r.status) for r in standin.requests]
    assert paths[-1] == ("POST", "/oauth2/revoke", 200)  # revoked at the end of the with block
    assert CLIENT_SECRET not in bridge.log()


def test_wrong_secret_is_the_functions_500_with_oauth2_error(make_bridge, broker, topic_prefix, standin, secrets_dir):
    (secrets_dir / "thing_client_secret").write_text("bad-Secret-9137")
    make_bridge([{"topic": f"{topic_prefix}/update", "handler": "update_thing"}], handlers_dir=EXAMPLES,
                iot_studio={"api_url": standin.url}, secrets={"dir": str(secrets_dir)})
    reply = rr(broker.port, f"{topic_prefix}/update", "")
    error = reply["body"]["error"]
    assert reply["status_code"] == 500
    assert error["details"]["exception_type"] == "OAuth2Error"
    assert "invalid_client" in error["message"]
    assert "bad-Secret-9137" not in json.dumps(reply)


def test_no_code_route_writes_the_payload(make_bridge, broker, topic_prefix, standin, secrets_dir):
    make_bridge([{"topic": f"{topic_prefix}/props", "thing": THING_ROUTE}],
                iot_studio={"api_url": standin.url}, secrets={"dir": str(secrets_dir)})
    reply = rr(broker.port, f"{topic_prefix}/props", '{"humidity": 40}')
    assert reply["status_code"] == 202
    wait_for(lambda: standin.properties(SPACE, THING).get("humidity") == 40, what="property written")
    bad = rr(broker.port, f"{topic_prefix}/props", "[1, 2]")
    assert bad["status_code"] == 400 and "JSON object" in bad["body"]["error"]["message"]


def test_function_result_is_written_through_a_thing_route(make_bridge, broker, topic_prefix, standin, secrets_dir):
    # inspect_event answers a dict body: a route with both a function and a Thing writes it.
    make_bridge([{"topic": f"{topic_prefix}/fn", "handler": "inspect_event", "thing": THING_ROUTE}],
                iot_studio={"api_url": standin.url}, secrets={"dir": str(secrets_dir)})
    assert rr(broker.port, f"{topic_prefix}/fn", "x")["status_code"] == 200
    wait_for(lambda: standin.properties(SPACE, THING).get("method") == "POST", what="result written")


def test_updates_made_while_the_api_is_down_land_after_a_restart(make_bridge, broker, topic_prefix, standin,
                                                                  secrets_dir, tmp_path):
    outbox = {"path": str(tmp_path / "outbox.db"), "retry_initial": 0.1, "retry_max": 0.3}
    routes = [{"topic": f"{topic_prefix}/props", "thing": THING_ROUTE}]
    sections = {"iot_studio": {"api_url": standin.url, "max_attempts": 1}, "secrets": {"dir": str(secrets_dir)},
                "outbox": outbox}
    standin.faults.set_down(True)
    bridge = make_bridge(routes, **sections)
    for n in range(1, 6):
        pub(broker.port, f"{topic_prefix}/props", json.dumps({"counter": n}))
    wait_for(lambda: _outbox_rows(tmp_path / "outbox.db") == 5, what="5 updates queued")
    assert bridge.stop() == 0  # restarted while the API is still down
    standin.faults.set_down(False)
    bridge.start()
    wait_for(lambda: standin.properties(SPACE, THING).get("counter") == 5, what="last update landed")
    history = [r.json for r in standin.requests if r.method == "PUT" and r.status == 200]
    assert [h["counter"] for h in history] == [1, 2, 3, 4, 5]  # each once, in order
    assert CLIENT_SECRET not in bridge.log()


def _outbox_rows(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        table = db.execute("select name from sqlite_master where type='table'").fetchone()[0]
        return db.execute(f"select count(*) from {table}").fetchone()[0]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_functions_call_the_api_with_the_iot_studio_settings(make_bridge, broker, topic_prefix, standin,
                                                             secrets_dir, mode):
    """[iot_studio] max_attempts = 1: a function's call fails at the first 503.  Worker
    processes once used the built-in settings (4 attempts) whatever the config said."""
    make_bridge([{"topic": f"{topic_prefix}/update", "handler": "api_update"}],
                iot_studio={"api_url": standin.url, "max_attempts": 1}, secrets={"dir": str(secrets_dir)},
                workers={"mode": mode})
    standin.faults.fail_next(3, status=503, path="*/properties")
    reply = rr(broker.port, f"{topic_prefix}/update", '{"temperature": 5}')
    assert reply["status_code"] == 500, reply
    assert [r.status for r in standin.requests if r.method == "PUT"] == [503]
