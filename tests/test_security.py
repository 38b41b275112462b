"""TLS and authentication to the broker: the real daemon against a real mosquitto.

Each test starts its own mosquitto: the project's mosquitto.conf (a plain loopback listener)
plus, where TLS is tested, a second listener with the test PKI's certificates.  The bridge is
pointed at that TLS listener; a test client reaches the bridge through either listener (the
broker routes messages between them).  Refusals are checked on the bridge's log with bounded
waits, and the bridge must still be running and retrying afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.bridgeproc import BridgeProcess
from tests.support.broker import Broker, free_port, wait_port
from tests.support.certs import Pki, broker_tls_listener, client_tls_options, make_pki
from tests.support.clients import rr

READY = "ready: subscribed"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start private brokers with extra mosquitto.conf lines; all are stopped at the end."""
    started: list[Broker] = []

    def start(extra: str = "", *, wait_for: int | None = None) -> Broker:
        b = Broker(tmp_path / f"broker{len(started)}", extra=extra)
        started.append(b)
        b.start()
        if wait_for is not None:
            wait_port(wait_for)
        return b

    yield start
    for b in started:
        b.stop()


def tls_broker(start_broker: Callable[..., Broker], pki: Pki, *, wrong_name: bool = False,
               require_certificate: bool = False) -> tuple[Broker, int]:
    """A broker with a TLS listener; returns it and the TLS port."""
    port = free_port()
    server = pki.wrong_server if wrong_name else pki.server
    extra = broker_tls_listener(port, pki, server, require_certificate=require_certificate)
    return start_broker(extra, wait_for=port), port


def assert_refused_and_retrying(bridge: BridgeProcess, text: str, *, attempts: int = 2,
                                timeout: float = 15.0) -> str:
    """``text`` logged ``attempts`` times (it keeps retrying), never ready, still running."""
    bridge.wait_for_log(text, timeout=timeout, occurrence=attempts)
    log = bridge.log()
    assert READY not in log, log
    assert bridge.proc is not None and bridge.proc.poll() is None, log
    return log


def route(topic_prefix: str) -> list[dict[str, str]]:
    return [{"topic": f"{topic_prefix}/inspect", "handler": "inspect_event"}]


# -- TLS: server verification ----------------------------------------------------------------
def test_bridge_connects_over_tls_verifying_the_server_and_serves(
    make_bridge, start_broker, pki, topic_prefix
):
    broker, tls_port = tls_broker(start_broker, pki)
    bridge = make_bridge(route(topic_prefix), on=broker,
                         mqtt={"port": tls_port, "tls": {"ca_file": str(pki.ca)}})
    assert f"connected to 127.0.0.1:{tls_port}" in bridge.log()
    topic = f"{topic_prefix}/inspect"
    reply = rr(tls_port, topic, "over tls", options=client_tls_options(pki))
    assert reply["status_code"] == 200
    assert reply["body"]["topic"] == topic
    assert reply["body"]["body"] == "over tls"


def test_a_broker_certificate_for_another_host_name_is_refused(
    make_bridge, start_broker, pki, topic_prefix
):
    broker, tls_port = tls_broker(start_broker, pki, wrong_name=True)
    bridge = make_bridge(route(topic_prefix), on=broker, start=False,
                         mqtt={"port": tls_port, "tls": {"ca_file": str(pki.ca)}})
    bridge.start(wait_ready=False)
    log = assert_refused_and_retrying(bridge, "certificate verify failed")
    assert "cannot connect to 127.0.0.1" in log
    assert "mismatch" in log  # the reason is the name, not the chain
    # Nothing reached the broker's MQTT layer: no client connected there.
    assert "New client connected" not in broker.log_path.read_text(errors="replace")


def test_insecure_skips_the_host_name_check_and_connects(
    make_bridge, start_broker, pki, topic_prefix
):
    broker, tls_port = tls_broker(start_broker, pki, wrong_name=True)
    make_bridge(route(topic_prefix), on=broker,
                mqtt={"port": tls_port, "tls": {"ca_file": str(pki.ca), "insecure": True}})
    topic = f"{topic_prefix}/inspect"
    # The test client uses the plain listener: the bridge's side is what is tested.
    assert rr(broker.port, topic, "named wrong")["body"]["body"] == "named wrong"


def test_insecure_still_requires_a_certificate_from_the_trusted_ca(
    make_bridge, start_broker, pki, topic_prefix, tmp_path
):
    broker, tls_port = tls_broker(start_broker, pki, wrong_name=True)
    other = make_pki(tmp_path / "other-pki")  # a CA the broker's certificate is not from
    bridge = make_bridge(route(topic_prefix), on=broker, start=False,
                         mqtt={"port": tls_port, "tls": {"ca_file": str(other.ca), "insecure": True}})
    bridge.start(wait_ready=False)
    log = assert_refused_and_retrying(bridge, "certificate verify failed")
    assert "mismatch" not in log  # refused for the chain; the name check is off


# -- TLS: client certificates ------------------------------------------------------------------
def test_client_certificate_required_bridge_with_cert_and_key_serves(
    make_bridge, start_broker, pki, topic_prefix
):
    broker, tls_port = tls_broker(start_broker, pki, require_certificate=True)
    make_bridge(route(topic_prefix), on=broker, mqtt={"port": tls_port, "tls": {
        "ca_file": str(pki.ca), "cert_file": str(pki.client.cert), "key_file": str(pki.client.key),
    }})
    topic = f"{topic_prefix}/inspect"
    reply = rr(tls_port, topic, "mutual", options=client_tls_options(pki, pki.client))
    assert (reply["status_code"], reply["body"]["body"]) == (200, "mutual")


def test_client_certificate_required_bridge_without_one_does_not_connect(
    make_bridge, start_broker, pki, topic_prefix
):
    broker, tls_port = tls_broker(start_broker, pki, require_certificate=True)
    # Sanity: the listener does refuse a client without a certificate.
    probe = subprocess.run(
        ["mosquitto_rr", "-V", "5", "-p", str(tls_port), *client_tls_options(pki),
         "-t", "probe", "-e", "replies/probe", "-m", "x", "-W", "2"],
        capture_output=True, timeout=10,
    )
    assert probe.returncode != 0
    bridge = make_bridge(route(topic_prefix), on=broker, start=False,
                         mqtt={"port": tls_port, "tls": {"ca_file": str(pki.ca)}})
    bridge.start(wait_ready=False)
    # TLS 1.3 finishes the client's side of the handshake before the broker checks for a
    # certificate, so the refusal shows either as a failed connect or as a dropped connection.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        log = bridge.log()
        failures = log.count("cannot connect to") + log.count("disconnected from the broker")
        if failures >= 2:
            break
        assert bridge.proc is not None and bridge.proc.poll() is None, log
        time.sleep(0.05)
    else:
        raise AssertionError(f"no refused connection logged twice within 15 s:\n{bridge.log()}")
    assert READY not in log and "connection: connected to" not in log, log
    assert bridge.proc.poll() is None, log


# -- username / password from the secrets store ------------------------------------------------
USER = "bridge"
PASSWORD = "s3cret-Pa55-never-logged"
PASSWORD_SECRET = "mqtt_password"


@pytest.fixture
def auth_broker(start_broker, tmp_path: Path) -> Broker:
    """A broker that refuses anonymous clients and knows USER with PASSWORD."""
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD],
                   check=True, capture_output=True, timeout=10)
    # allow_anonymous is global: the later line overrides the repository's `true`.
    return start_broker(f"allow_anonymous false\npassword_file {passwd}\n")


def secrets_dir(tmp_path: Path, files: dict[str, tuple[str, int]]) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir(exist_ok=True)
    for name, (value, mode) in files.items():
        path = directory / name
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(mode)
    return directory


def auth_options(password: str = PASSWORD) -> list[str]:
    return ["-u", USER, "-P", password]


def test_bridge_authenticates_with_the_password_from_a_secret_file(
    make_bridge, auth_broker, tmp_path, topic_prefix
):
    directory = secrets_dir(tmp_path, {PASSWORD_SECRET: (PASSWORD, 0o600)})
    bridge = make_bridge(route(topic_prefix), on=auth_broker,
                         secrets={"dir": str(directory)},
                         mqtt={"username": USER, "password_secret": PASSWORD_SECRET},
                         logging={"level": "DEBUG"})
    topic = f"{topic_prefix}/inspect"
    reply = rr(auth_broker.port, topic, "authenticated", options=auth_options())
    assert reply["body"]["body"] == "authenticated"
    bridge.stop()
    log = bridge.log()
    assert PASSWORD not in log
    assert "readable by" not in log  # 0600: no permission warning


def test_anonymous_clients_are_refused_by_the_auth_broker(auth_broker):
    # Guards the test setup: the later allow_anonymous line really took effect.
    out = subprocess.run(
        ["mosquitto_pub", "-V", "5", "-p", str(auth_broker.port), "-t", "x", "-m", "y"],
        capture_output=True, timeout=10,
    )
    assert out.returncode != 0


def test_a_wrong_password_is_refused_logged_and_retried(
    make_bridge, auth_broker, tmp_path, topic_prefix
):
    wrong = "not-the-Pa55word-either"
    directory = secrets_dir(tmp_path, {PASSWORD_SECRET: (wrong, 0o600)})
    bridge = make_bridge(route(topic_prefix), on=auth_broker, start=False,
                         secrets={"dir": str(directory)},
                         mqtt={"username": USER, "password_secret": PASSWORD_SECRET},
                         logging={"level": "DEBUG"})
    bridge.start(wait_ready=False)
    log = assert_refused_and_retrying(bridge, "broker refused the connection", attempts=3)
    assert wrong not in log and PASSWORD not in log
    bridge.stop()
    assert wrong not in bridge.log()


def test_a_missing_password_secret_exits_2_naming_the_key(
    make_bridge, auth_broker, tmp_path, topic_prefix
):
    directory = secrets_dir(tmp_path, {"something_else": ("x", 0o600)})
    bridge = make_bridge(route(topic_prefix), on=auth_broker, start=False,
                         secrets={"dir": str(directory)},
                         mqtt={"username": USER, "password_secret": "no_such_secret"})
    bridge.start(wait_ready=False)
    assert bridge.wait(timeout=20) == 2
    log = bridge.log()
    assert "mqtt.password_secret" in log and "no_such_secret" in log
    assert READY not in log


def test_a_password_secret_without_any_secrets_directory_exits_2(
    make_bridge, auth_broker, topic_prefix
):
    bridge = make_bridge(route(topic_prefix), on=auth_broker, start=False,
                         env={"CREDENTIALS_DIRECTORY": "", "_SECRETS_PATH": ""},
                         mqtt={"username": USER, "password_secret": PASSWORD_SECRET})
    bridge.start(wait_ready=False)
    assert bridge.wait(timeout=20) == 2
    assert "mqtt.password_secret" in bridge.log()


# -- secret file permissions -------------------------------------------------------------------
def test_secret_files_readable_by_group_or_others_are_warned_about_at_start(
    make_bridge, broker, tmp_path, topic_prefix
):
    directory = secrets_dir(tmp_path, {
        "world_readable": ("w-value-zz1", 0o644),
        "group_readable": ("g-value-zz2", 0o640),
        "private": ("p-value-zz3", 0o600),
    })
    bridge = make_bridge(route(topic_prefix), on=broker, secrets={"dir": str(directory)})
    log = bridge.log()
    before_ready = log[: log.index(READY)]
    assert f"secret file {directory / 'world_readable'} is readable by group and others" in before_ready
    assert f"secret file {directory / 'group_readable'} is readable by group " in before_ready
    assert str(directory / "private") not in log
    for value in ("w-value-zz1", "g-value-zz2", "p-value-zz3"):
        assert value not in log
    # The warnings do not stop it serving.
    assert rr(broker.port, f"{topic_prefix}/inspect", "ok")["body"]["body"] == "ok"


def test_a_readable_password_secret_is_warned_about_and_still_used(
    make_bridge, auth_broker, tmp_path, topic_prefix
):
    directory = secrets_dir(tmp_path, {PASSWORD_SECRET: (PASSWORD, 0o644)})
    bridge = make_bridge(route(topic_prefix), on=auth_broker,
                         secrets={"dir": str(directory)},
                         mqtt={"username": USER, "password_secret": PASSWORD_SECRET})
    log = bridge.log()
    assert f"secret file {directory / PASSWORD_SECRET} is readable by group and others" in log
    assert "chmod 600" in log
    assert PASSWORD not in log


def test_tls_certificates_that_cannot_be_loaded_exit_2_naming_the_key(tmp_path):
    """A missing CA file is a configuration error: exit 2 (the unit's
    RestartPreventExitStatus), not 1, which systemd would restart every 5 s for ever."""
    config = tmp_path / "bridge.toml"
    config.write_text(f'handlers_dir = "{tmp_path}"\n[mqtt]\nport = {free_port()}\n'
                      f'[mqtt.tls]\nca_file = "{tmp_path / "missing-ca.pem"}"\n[http]\nlisten = ""\n'
                      f'[replies]\nstore = "{tmp_path / "state" / "replies.db"}"\n')
    out = subprocess.run([sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "mqtt.tls: cannot load certificates" in out.stderr
