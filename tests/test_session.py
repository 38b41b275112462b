"""The bridge and the broker's promises, with a real mosquitto: a second bridge with the same
client id, a session the broker forgot, a lower QoS granted, a cap on messages in flight;
and connecting without probe connections and without blocking the event loop."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time

import pytest

from tests.support.broker import Broker, free_port
from tests.support.certs import make_pki
from tests.support.clients import pub, rr
from tests.support.faults import injected
from tests.support.load import clashing_bridges, take_over, unfinished_in_session
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def figures(name: str, **values: object) -> None:
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def _route(t: str, **extra: object) -> list[dict[str, object]]:
    return [{"topic": f"{t}/x", "handler": "inspect_event", **extra}]


def test_a_second_bridge_with_the_same_client_id_is_reported_and_backs_off(make_bridge, own_broker, topic_prefix):
    """Issue 8 row 14: two bridges with one client_id took the session from each other
    thousands of times, neither saying why.  Now each takeover slows the next reconnect
    (up to mqtt.reconnect_max_delay) and the clash is an ERROR naming the client id."""
    shared, window = "clash-" + topic_prefix[-20:], 8.0
    first, second, connects = clashing_bridges(make_bridge, own_broker, shared, _route(topic_prefix), window=window)
    takeovers = own_broker.log_path.read_text().count("already connected, closing old connection")
    figures("client_id_clash", window_s=window, connects_in_window=connects, broker_takeovers_total=takeovers)
    # 4 connections (2 bridges x requests/replies), each at most one attempt per ~1 s once backed off.
    assert connects <= 4 * (window / 0.8 + 1), connects
    errors = [line for line in (first.log() + second.log()).splitlines() if "ERROR" in line and shared in line]
    assert errors and "mqtt.client_id" in errors[0], errors


def test_a_session_the_broker_forgot_is_reported_at_the_next_start(make_bridge, own_broker, topic_prefix):
    """The bridge knows from its state directory that it had a session; a broker that comes
    back without it (here: its persistence file removed) is a WARNING naming the settings.
    A restart on a kept session says nothing of the kind."""
    bridge = make_bridge(_route(topic_prefix), on=own_broker)
    assert bridge.stop() == 0
    bridge.start()  # the session was kept
    assert bridge.log().count("(session resumed)") >= 1
    assert "did not keep the session" not in bridge.log()
    assert bridge.stop() == 0
    own_broker.stop()
    (own_broker.workdir / "mosquitto.db").unlink(missing_ok=True)
    own_broker.start()
    bridge.start()
    log = bridge.log()
    assert log.count("did not keep the session") == 1, log
    assert "persistence true" in log


def test_requests_with_correlation_data_are_answered_after_a_restart_on_the_kept_session(
        make_bridge, own_broker, topic_prefix):
    """A request/response client sets Correlation Data (``mosquitto_rr -D publish
    correlation-data``).  After a restart that resumes the session, the bridge answers and
    acknowledges such requests as before.  It once failed on each reply's PUBACK there: the
    requests stayed unacknowledged (rerun at the next start) and each kept its in-flight slot."""
    topic = f"{topic_prefix}/x"
    bridge = make_bridge(_route(topic_prefix), on=own_broker)

    def ask(n: int) -> dict[str, object]:
        return rr(own_broker.port, topic, f"req-{n}", props=[("publish", "correlation-data", f"corr-{n}")], wait=5)

    assert ask(0)["status_code"] == 200
    assert bridge.stop() == 0
    bridge.start()
    assert "requests connection: connected to" in bridge.log().split("(session resumed)")[0]
    for n in range(1, 4):
        reply = ask(n)
        assert reply["status_code"] == 200 and reply["body"]["body"] == f"req-{n}", reply
    assert bridge.stop() == 0
    assert unfinished_in_session(own_broker.port, bridge.config["mqtt"]["client_id"], topic) == []
    assert "Traceback" not in bridge.log(), bridge.log()


def test_a_bug_in_handling_a_new_connection_is_logged_and_the_bridge_serves_on(
        make_bridge, own_broker, topic_prefix, tmp_path):
    """A bug in the bridge's handling of a new connection (here: a fault injected into
    resuming the session) is logged with its traceback, and the connection still subscribes
    and serves: it once stayed up unsubscribed, never ready, and said nothing."""
    env = injected(tmp_path, """
        from bridge import delivery

        def _broken(self, last_read=None):
            raise RuntimeError("injected fault in session_resumed")

        delivery.Ledger.session_resumed = _broken
    """)
    bridge = make_bridge(_route(topic_prefix), on=own_broker, env=env)
    assert bridge.stop() == 0
    bridge.start()  # the session was kept: resuming it raises
    log = bridge.log()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert any("handling the new connection failed; serving on" in line for line in errors), log
    assert "RuntimeError: injected fault in session_resumed" in log.split("handling the new connection failed")[1]
    assert rr(own_broker.port, f"{topic_prefix}/x", "still serving", wait=5)["status_code"] == 200


def test_an_exception_in_any_mqtt_callback_is_logged_with_its_traceback(make_bridge, broker, topic_prefix, tmp_path):
    """paho, told not to let a callback's exception end its loop, reports it only to a logger
    of its own: the bridge's log shows it (here: a fault injected into recording the
    session's subscriptions when the SUBACK arrives), and the bridge is ready and serves."""
    env = injected(tmp_path, """
        from bridge import promises

        def _broken(self, subscriptions, session_expiry):
            raise RuntimeError("injected fault in session_held")

        promises.SessionMarker.session_held = _broken
    """)
    bridge = make_bridge(_route(topic_prefix), env=env)
    log = bridge.log()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert any("Caught exception in on_subscribe" in line for line in errors), log
    assert "RuntimeError: injected fault in session_held" in log.split("Caught exception in on_subscribe")[1]
    assert rr(broker.port, f"{topic_prefix}/x", "still serving", wait=5)["status_code"] == 200


def test_a_bug_in_handling_a_lost_connection_is_logged_and_the_bridge_reconnects(
        make_bridge, broker, topic_prefix, tmp_path):
    """The same when a connection drops (here: a fault injected into pausing its reader): the
    error is logged and the connection comes back; it once stayed down for good."""
    env = injected(tmp_path, """
        from bridge import pump

        _connack = pump.Pump.connack

        def _broken(self, accepted):
            if not accepted:
                raise RuntimeError("injected fault in handling a disconnect")
            return _connack(self, accepted)

        pump.Pump.connack = _broken
    """)
    bridge = make_bridge(_route(topic_prefix), env=env)
    take_over(broker.port, bridge.config["mqtt"]["client_id"])
    bridge.wait_for_log("requests connection: connected to", 10, occurrence=2)
    log = bridge.log()
    assert "Caught exception in on_disconnect" in log and "RuntimeError: injected fault" in log, log
    assert rr(broker.port, f"{topic_prefix}/x", "still serving", wait=5)["status_code"] == 200


@pytest.mark.parametrize("refusal", ["not_authorized", "too_large"])
def test_a_reply_the_broker_refuses_is_logged_and_its_request_acknowledged(make_bridge, tmp_path, topic_prefix,
                                                                           refusal):
    """A reply the broker will not take (an ACL without write access to the response topic,
    a reply over mosquitto's message_size_limit) is a WARNING naming the reason; its request is
    acknowledged (sent again, the reply would be refused again) and the bridge serves on.
    Refusals were silent; mosquitto 2.0's 0x95 for a too large message made the reply
    connection reconnect for ever, resending the reply each time."""
    t = topic_prefix
    if refusal == "not_authorized":
        acl = tmp_path / "acl"
        acl.write_text(f"topic readwrite {t}/#\ntopic read replies/#\ntopic readwrite ok/#\n"
                       "topic readwrite iot-bridge/#\n")
        extra, body, reasons = f"acl_file {acl}\n", "hi", ["Not authorized (0x87)"]
    else:  # the request fits, its JSON reply does not
        extra, body, reasons = "message_size_limit 4000\n", "x" * 3900, ["Packet too large (0x95)", "Quota exceeded (0x97)"]
    broker = Broker(tmp_path / "refusing", extra=extra).start()
    try:
        bridge = make_bridge(_route(t), on=broker, replies={"allowed_topics": ["replies/#", "ok/#"]})
        pub(broker.port, f"{t}/x", body, props=[("publish", "response-topic", f"replies/{t}/1")])
        said = f"the broker refused the reply to a request on {t}/x: "
        bridge.wait_for_log(said, 10)
        line = next(line for line in bridge.log().splitlines() if said in line)
        assert "WARNING" in line and any(line.endswith(f"{r}; the request is acknowledged without a reply")
                                         for r in reasons), line
        assert rr(broker.port, f"{t}/x", "small", response_topic=f"ok/{t}/2", wait=5)["status_code"] == 200
        assert bridge.log().count("replies connection: connected to") == 1  # never dropped
        assert bridge.stop() == 0
        assert unfinished_in_session(broker.port, bridge.config["mqtt"]["client_id"], f"{t}/x") == []
    finally:
        broker.stop()


def test_a_lower_qos_granted_than_the_route_asks_is_reported(make_bridge, tmp_path, topic_prefix):
    from tests.support.broker import Broker
    with Broker(tmp_path / "capped", extra="max_qos 1\n") as broker:
        bridge = make_bridge(_route(topic_prefix, qos=2), on=broker)
        bridge.wait_for_log("granted QoS 1", 5)
        log = bridge.log()
    assert "route asks for QoS 2" in log and "max_qos" in log, log


def test_a_broker_cap_on_messages_in_flight_below_max_in_flight_is_reported(make_bridge, tmp_path, topic_prefix):
    from tests.support.broker import Broker
    with Broker(tmp_path / "capped", extra="max_inflight_messages 10\n") as broker:
        bridge = make_bridge(_route(topic_prefix), on=broker, limits={"max_in_flight": 50})
        log = bridge.log()
    line = next((l for l in log.splitlines() if "Receive Maximum" in l), "")
    assert "WARNING" in line and "allows 10" in line and "limits.max_in_flight = 50" in line, log
    assert "max_inflight_messages" in line


def test_connecting_makes_no_probe_connection(make_bridge, tmp_path, topic_prefix):
    """Every connection the broker sees is a real MQTT session (a probe made amqtt log an
    ERROR and mosquitto a notice per connect)."""
    from tests.support.broker import Broker
    logfile = tmp_path / "connections.log"
    with Broker(tmp_path / "b", extra=f"log_dest file {logfile}\n") as broker:
        # The test's own readiness check (tests/support/broker.wait_port) is one such probe.
        wait_for(lambda: "closed its connection" in logfile.read_text(), 5, "the readiness probe logged")
        offset = len(logfile.read_text())
        bridge = make_bridge(_route(topic_prefix), on=broker)
        bridge_id = bridge.config["mqtt"]["client_id"]
        wait_for(lambda: f"as {bridge_id} " in logfile.read_text(), 5, "the session logged")
        log = logfile.read_text()[offset:]
    connections = len(re.findall(r"New connection from 127\.0\.0\.1", log))
    sessions = log.count(f"as {bridge_id} ") + log.count(f"as {bridge_id}-replies ")
    figures("connections_per_start", tcp_connections=connections, mqtt_sessions=sessions)
    assert sessions == 2, log
    assert connections == 2, log
    assert "closed its connection" not in log, log


def test_a_tls_handshake_that_hangs_does_not_block_the_event_loop(make_bridge, tmp_path, topic_prefix):
    """A listener that accepts TCP and never answers the TLS handshake: the bridge still
    handles SIGTERM at once (paho's own connect would block the loop in the handshake)."""
    pki = make_pki(tmp_path / "pki")
    silent = socket.create_server(("127.0.0.1", free_port()))
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()[0]) for _ in range(50)], daemon=True).start()
    try:
        bridge = make_bridge(_route(topic_prefix), start=False,
                             mqtt={"port": port, "tls": {"ca_file": str(pki.ca)}})
        bridge.start(wait_ready=False)
        wait_for(lambda: accepted, 10, "the bridge's connection")
        accepted[0].settimeout(5)
        assert accepted[0].recv(1, socket.MSG_PEEK)  # its ClientHello: the handshake has begun
        started = time.monotonic()
        bridge.signal(signal.SIGTERM)
        rc = bridge.wait(10)
        stop_s = time.monotonic() - started
    finally:
        silent.close()
        for s in accepted:
            s.close()
    figures("hanging_tls_handshake", sigterm_to_exit_s=round(stop_s, 2))
    assert rc == 0
    assert stop_s < 1.5, stop_s
