"""The IoT Studio stand-in's faults, control routes, seeding and server lifecycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bridge.errors import ConfigError
from bridge.iotstudio.standin import StandIn, main
from bridge.iotstudio.standin_state import load_seed
from tests.support.standin import (
    CATEGORY,
    SPACE,
    THING,
    assert_error,
    bearer,
    call,
    fetch_token,
)

pytest_plugins = ["tests.support.standin"]

ROOT = Path(__file__).resolve().parents[1]
THING_URL = f"/spaces/{SPACE}/things/{THING}"


# -- faults -----------------------------------------------------------------------------------


def test_fail_next_then_recover(standin: StandIn) -> None:
    tok = fetch_token(standin)
    standin.faults.fail_next(2, status=503)
    url = f"{THING_URL}/properties"
    assert_error(call(standin, "GET", url, tok), 503, "Service unavailable")
    assert_error(call(standin, "GET", url, tok), 503, "Service unavailable")
    assert call(standin, "GET", url, tok).status_code == 200


def test_faults_can_be_limited_to_a_method_and_path(standin: StandIn) -> None:
    tok = fetch_token(standin)
    standin.faults.fail_next(1, status=500, method="PUT", path="*/properties")
    assert call(standin, "GET", f"{THING_URL}/properties", tok).status_code == 200
    assert call(standin, "PUT", f"{THING_URL}/properties/temperature", tok,
                json={"temperature": 1}).status_code == 200
    assert_error(call(standin, "PUT", f"{THING_URL}/properties", tok, json={"a": 1}), 500,
                 "Internal server error")
    assert call(standin, "PUT", f"{THING_URL}/properties", tok, json={"a": 1}).status_code == 200


def test_rate_limit_next(standin: StandIn) -> None:
    standin.faults.rate_limit_next(1, retry_after=3)
    reply = requests.post(f"{standin.url}/oauth2/token", data={}, timeout=5)
    assert assert_error(reply, 429, "Too many requests")["retry_after"] == 3
    assert reply.headers["Retry-After"] == "3"
    fetch_token(standin)


def test_delay_next(standin: StandIn) -> None:
    tok = fetch_token(standin)
    standin.faults.delay_next(1, seconds=0.3)
    with pytest.raises(requests.Timeout):
        requests.get(f"{standin.url}{THING_URL}/properties", headers=bearer(tok), timeout=0.1)
    started = time.monotonic()
    assert call(standin, "GET", f"{THING_URL}/properties", tok).status_code == 200
    assert time.monotonic() - started < 0.3


@pytest.mark.parametrize("path", ["/oauth2/token", f"{THING_URL}/properties", "/nothing"])
def test_set_down_answers_503_to_everything(standin: StandIn, path: str) -> None:
    tok = fetch_token(standin)
    standin.faults.set_down(True)
    assert_error(call(standin, "POST" if "oauth" in path else "GET", path, tok), 503,
                 "Service unavailable")
    standin.faults.set_down(False)
    assert call(standin, "GET", f"{THING_URL}/properties", tok).status_code == 200


def test_set_down_can_drop_connections(standin: StandIn) -> None:
    tok = fetch_token(standin)
    standin.faults.set_down(True, mode="close")
    with pytest.raises(requests.ConnectionError):
        call(standin, "GET", f"{THING_URL}/properties", tok)
    assert standin.requests[-1].status == 0
    standin.faults.clear()
    assert call(standin, "GET", f"{THING_URL}/properties", tok).status_code == 200


def test_expire_tokens(standin: StandIn) -> None:
    old = fetch_token(standin)
    standin.faults.expire_tokens()
    assert_error(call(standin, "GET", f"{THING_URL}/properties", old), 401, "Unauthenticated")
    assert call(standin, "GET", f"{THING_URL}/properties", fetch_token(standin)).status_code == 200


def test_faults_are_validated(standin: StandIn) -> None:
    with pytest.raises(ValueError):
        standin.faults.fail_next(0)
    with pytest.raises(ValueError):
        standin.faults.set_down(True, mode="sideways")  # type: ignore[arg-type]


def test_faults_and_state_over_http(standin: StandIn) -> None:
    control = f"{standin.url}/__faults"
    tok = fetch_token(standin)
    fault = {"op": "fail_next", "n": 1, "status": 502}
    assert requests.post(control, json=fault, timeout=5).json() == {"ok": True}
    assert_error(call(standin, "GET", f"{THING_URL}/properties", tok), 502, "Bad gateway")
    down = {"op": "set_down", "down": True}
    assert requests.post(control, json=down, timeout=5).status_code == 200
    assert call(standin, "GET", f"{THING_URL}/properties", tok).status_code == 503
    assert requests.post(control, json={"op": "clear"}, timeout=5).status_code == 200
    assert requests.post(control, json={"op": "expire_tokens"}, timeout=5).status_code == 200
    assert call(standin, "GET", f"{THING_URL}/properties", tok).status_code == 401
    assert_error(requests.post(control, json={"op": "explode"}, timeout=5), 400, "bad fault")
    bogus = {"op": "fail_next", "bogus": 1}
    assert_error(requests.post(control, json=bogus, timeout=5), 400, "bad fault")
    assert_error(requests.post(control, data="nope", timeout=5), 400, "malformed body")

    listed = requests.get(f"{standin.url}/__requests", timeout=5).json()["requests"]
    assert [r["status"] for r in listed] == [200, 502, 503, 401]  # control calls are not recorded
    assert requests.delete(f"{standin.url}/__requests", timeout=5).status_code == 204
    assert standin.requests == []
    state = requests.get(f"{standin.url}/__things/{SPACE}/{THING}", timeout=5).json()
    assert state["properties"] == {"temperature": 20} and state["category"] == CATEGORY
    ghost = requests.get(f"{standin.url}/__things/{SPACE}/ghost", timeout=5)
    assert_error(ghost, 404, "Item not found")


# -- seeding, lifecycle, concurrency ----------------------------------------------------------


def test_seed_files(tmp_path: Path) -> None:
    toml = tmp_path / "seed.toml"
    toml.write_text(
        'expires_in = 5\n[[clients]]\nid = "c"\nsecret = "topsecret"\nscopes = ["thing"]\n'
        '[[things]]\nspace = "s"\nuid = "t"\ncategory = "k"\nproperties = { on = true }\n'
    )
    seed = load_seed(toml)
    assert seed.expires_in == 5 and seed.things[0].properties == {"on": True}
    assert seed.clients[0].secret == "topsecret" and "topsecret" not in repr(seed)
    as_json = tmp_path / "seed.json"
    as_json.write_text(json.dumps(seed.model_dump()))
    assert load_seed(as_json) == seed
    for bad, match in (("[[clients]]\nid = 1\n", "clients.0"), ("nonsense = 1", "nonsense"),
                       ("not toml [", "malformed")):
        toml.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            load_seed(toml)
    with pytest.raises(ConfigError, match="cannot read"):
        load_seed(tmp_path / "absent.toml")


def test_restart_keeps_port_and_state(standin: StandIn) -> None:
    tok, url = fetch_token(standin), standin.url
    call(standin, "PUT", f"{THING_URL}/properties", tok, json={"kept": True})
    standin.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)
    standin.start()
    assert standin.url == url
    assert call(standin, "GET", f"{THING_URL}/properties", tok).json()["kept"] is True


def test_concurrent_updates_are_all_applied(standin: StandIn) -> None:
    tok = fetch_token(standin)

    def writer(n: int) -> None:
        with requests.Session() as session:
            for i in range(10):
                reply = session.put(f"{standin.url}{THING_URL}/properties", headers=bearer(tok),
                                    json={f"w{n}_{i}": i}, timeout=5)
                assert reply.status_code == 200

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(standin.properties(SPACE, THING)) == 1 + 80
    assert len(standin.thing(SPACE, THING).history) == 80


def test_main_rejects_a_bad_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read stand-in seed" in capsys.readouterr().err


def test_main_serves_a_seeded_stand_in_until_terminated(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"clients": [{"id": "c", "secret": "s", "scopes": ["thing"]}],
                                "things": [{"space": "s", "uid": "t", "properties": {"x": 1}}]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.iotstudio.standin", "--port", "0", "--config", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening on http://127.0.0.1:" in line, proc.stderr.read() if proc.stderr else ""
        url = line.split()[-1]
        reply = requests.post(f"{url}/oauth2/token", timeout=5, data={
            "grant_type": "client_credentials", "client_id": "c", "client_secret": "s"})
        tok = reply.json()["access_token"]
        requests.post(f"{url}/__faults", json={"op": "fail_next", "status": 504}, timeout=5)
        got = requests.get(f"{url}/spaces/s/things/t/properties", headers=bearer(tok), timeout=5)
        assert got.status_code == 504
        got = requests.get(f"{url}/spaces/s/things/t/properties", headers=bearer(tok), timeout=5)
        assert got.json() == {"x": 1}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
