"""The durable outbox of Thing property updates, delivered to the stand-in over real HTTP."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_for

from bridge.config import IotStudioConfig, OutboxConfig, ThingTarget
from bridge.errors import ConfigError
from bridge.iotstudio.automation import ThingPayloadError, ThingWriter
from bridge.iotstudio.client import ApiClient
from bridge.iotstudio.outbox import OutboxError
from bridge.iotstudio.standin import StandIn
from bridge.secretstore import SecretStore
from tests.support.standin import CATEGORY, CLIENT_ID, CLIENT_SECRET, LOOSE_THING, SPACE, THING

pytest_plugins = ["tests.support.standin"]

TARGET = ThingTarget(space=SPACE, category=CATEGORY, thing_id=THING,
                     client_id_secret="iot-id", client_secret_secret="iot-secret")
LOOSE = ThingTarget(space=SPACE, thing_id=LOOSE_THING,
                    client_id_secret="iot-id", client_secret_secret="iot-secret")


@pytest.fixture
def secrets(tmp_path: Path) -> SecretStore:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "iot-id").write_text(CLIENT_ID + "\n")
    (folder / "iot-secret").write_text(CLIENT_SECRET + "\n")
    return SecretStore(folder)


@pytest.fixture
def client(standin: StandIn) -> Iterator[ApiClient]:
    config = IotStudioConfig(api_url=standin.url, timeout=2.0, max_attempts=2,
                             backoff_initial=0.005, backoff_max=0.01)
    with ApiClient(config) as root:
        yield root


@pytest.fixture
def make_writer(tmp_path: Path, secrets: SecretStore,
                client: ApiClient) -> Iterator[Callable[..., ThingWriter]]:
    """Writers on one outbox file; all are closed after the test."""
    made: list[ThingWriter] = []

    def make(start: bool = True, **overrides: Any) -> ThingWriter:
        values: dict[str, Any] = dict(path=tmp_path / "state" / "outbox.db", max_age=60.0,
                                      max_items=100, retry_initial=0.01, retry_max=0.05)
        values.update(overrides)
        writer = ThingWriter(OutboxConfig(**values), secrets, client)
        made.append(writer)
        if start:
            writer.start()
        return writer

    yield make
    for writer in made:
        writer.close()


def delivered(standin: StandIn, thing: str) -> list[Any]:
    """Bodies of the accepted PUTs to ``thing``, in the order the stand-in took them."""
    suffix = f"/things/{thing}/properties"
    return [r.json for r in standin.requests
            if r.method == "PUT" and r.path.endswith(suffix) and r.status == 200]


def test_submit_delivers_and_counts(make_writer, standin: StandIn) -> None:
    writer = make_writer()
    writer.submit(TARGET, {"temperature": 27})
    wait_for(lambda: writer.stats()["delivered"] == 1)
    assert standin.properties(SPACE, THING) == {"temperature": 27}
    assert writer.stats() == {"delivered": 1, "retried": 0, "dropped_full": 0,
                              "dropped_expired": 0, "failed_final": 0, "pending": 0}
    # The category form of the path was used, as the target names a category.
    assert delivered(standin, THING) and any(
        f"/categories/{CATEGORY}/" in r.path for r in standin.requests if r.method == "PUT")


def test_updates_wait_for_the_api_and_keep_order_per_thing(make_writer, standin: StandIn) -> None:
    writer = make_writer()
    standin.faults.set_down(True)
    for seq in range(5):
        writer.submit(TARGET, {"seq": seq})
        writer.submit(LOOSE, {"n": seq})
    wait_for(lambda: writer.stats()["retried"] >= 4)
    assert writer.stats()["pending"] == 10 and writer.stats()["delivered"] == 0
    standin.faults.clear()
    wait_for(lambda: writer.stats()["pending"] == 0)
    assert delivered(standin, THING) == [{"seq": seq} for seq in range(5)]
    assert delivered(standin, LOOSE_THING) == [{"n": seq} for seq in range(5)]
    assert writer.stats()["delivered"] == 10


def test_order_holds_under_intermittent_faults(make_writer, standin: StandIn) -> None:
    writer = make_writer()
    standin.faults.fail_next(3, status=503, path=f"*/{THING}/properties")
    standin.faults.rate_limit_next(2, retry_after=0.02, path=f"*/{THING}/properties")
    standin.faults.fail_next(2, status=502, path=f"*/{LOOSE_THING}/properties")
    for seq in range(20):
        writer.submit(TARGET if seq % 3 else LOOSE, {"seq": seq})
    wait_for(lambda: writer.stats()["delivered"] == 20)
    assert delivered(standin, THING) == [{"seq": s} for s in range(20) if s % 3]
    assert delivered(standin, LOOSE_THING) == [{"seq": s} for s in range(20) if not s % 3]
    assert writer.stats()["retried"] >= 1


def test_survives_a_restart_while_the_api_is_down(make_writer, standin: StandIn) -> None:
    first = make_writer()
    standin.faults.set_down(True, mode="close")
    for seq in range(3):
        first.submit(TARGET, {"seq": seq})
    wait_for(lambda: first.stats()["retried"] >= 1)
    first.close()

    second = make_writer(start=False)
    assert second.stats()["pending"] == 3
    second.submit(TARGET, {"seq": 3})  # queued behind what the first writer left
    second.start()
    wait_for(lambda: second.stats()["retried"] >= 1)
    standin.faults.clear()
    wait_for(lambda: second.stats()["pending"] == 0)
    assert delivered(standin, THING) == [{"seq": seq} for seq in range(4)]
    assert standin.properties(SPACE, THING)["seq"] == 3


def test_final_4xx_is_dropped_not_retried(make_writer, standin: StandIn) -> None:
    writer = make_writer()
    standin.faults.fail_next(1, status=400, message="malformed body", path="*/properties")
    writer.submit(TARGET, {"seq": 1})
    writer.submit(TARGET, {"seq": 2})
    wait_for(lambda: writer.stats()["pending"] == 0)
    puts = [r.status for r in standin.requests if r.method == "PUT"]
    assert puts == [400, 200]
    assert writer.stats()["failed_final"] == 1 and writer.stats()["delivered"] == 1


def test_unknown_thing_is_final(make_writer, standin: StandIn) -> None:
    writer = make_writer()
    writer.submit(TARGET.model_copy(update={"thing_id": "nope"}), {"x": 1})
    wait_for(lambda: writer.stats()["failed_final"] == 1)
    assert writer.stats()["pending"] == 0 and writer.stats()["retried"] == 0


def test_401_and_408_are_retried(make_writer, standin: StandIn) -> None:
    writer = make_writer()
    # Two 401s use up the client's one token re-fetch; the outbox tries again later.
    standin.faults.fail_next(2, status=401, message="Unauthenticated", path="*/properties")
    standin.faults.fail_next(1, status=408, message="Request timeout", path="*/properties")
    writer.submit(TARGET, {"seq": 1})
    wait_for(lambda: writer.stats()["delivered"] == 1)
    assert writer.stats()["retried"] == 2 and writer.stats()["failed_final"] == 0


def test_old_updates_expire(make_writer, standin: StandIn) -> None:
    writer = make_writer(max_age=0.2)
    standin.faults.set_down(True)
    writer.submit(TARGET, {"seq": 1})
    writer.submit(LOOSE, {"seq": 1})
    wait_for(lambda: writer.stats()["dropped_expired"] == 2)
    assert writer.stats()["pending"] == 0
    standin.faults.clear()
    writer.submit(TARGET, {"seq": 2})
    wait_for(lambda: writer.stats()["delivered"] == 1)
    assert delivered(standin, THING) == [{"seq": 2}]


def test_full_outbox_drops_the_oldest(make_writer, standin: StandIn) -> None:
    writer = make_writer(start=False, max_items=3)
    for seq in range(5):
        writer.submit(TARGET, {"seq": seq})
    assert writer.stats()["dropped_full"] == 2 and writer.stats()["pending"] == 3
    writer.start()
    wait_for(lambda: writer.stats()["pending"] == 0)
    assert delivered(standin, THING) == [{"seq": 2}, {"seq": 3}, {"seq": 4}]


def test_missing_secret_is_retried_until_it_appears(make_writer, secrets: SecretStore,
                                                    standin: StandIn) -> None:
    writer = make_writer()
    target = TARGET.model_copy(update={"client_secret_secret": "later"})
    with pytest.raises(ConfigError):
        writer.check(target)
    writer.check(TARGET)
    writer.submit(target, {"seq": 1})
    wait_for(lambda: writer.stats()["retried"] >= 2)
    assert writer.stats()["pending"] == 1
    (secrets.dir / "later").write_text(CLIENT_SECRET)
    wait_for(lambda: writer.stats()["delivered"] == 1)


def test_submit_rejects_what_cannot_be_sent(make_writer) -> None:
    writer = make_writer(start=False)
    with pytest.raises(ThingPayloadError):
        writer.submit(TARGET, {"t": float("nan")})
    with pytest.raises(ThingPayloadError):
        writer.submit(TARGET, {"t": object()})
    with pytest.raises(ThingPayloadError):
        writer.submit(TARGET, [1, 2])  # type: ignore[arg-type]
    writer.close()
    with pytest.raises(OutboxError):
        writer.submit(TARGET, {"t": 1})


def test_outbox_file_is_private(make_writer, tmp_path: Path) -> None:
    make_writer(start=False)
    mode = (tmp_path / "state" / "outbox.db").stat().st_mode
    assert not mode & (stat.S_IRWXG | stat.S_IRWXO)


def test_submit_is_fast_while_the_api_hangs(make_writer, standin: StandIn) -> None:
    writer = make_writer()
    standin.faults.delay_next(1, seconds=0.8)
    writer.submit(TARGET, {"seq": 0})
    started = time.monotonic()
    for seq in range(1, 50):
        writer.submit(TARGET, {"seq": seq})
    assert time.monotonic() - started < 0.5  # the delivery thread is stuck in the slow PUT
    wait_for(lambda: writer.stats()["delivered"] == 50)


def test_a_thing_failing_for_half_a_day_neither_stops_nor_floods_the_others(make_writer, standin: StandIn,
                                                                           tmp_path: Path) -> None:
    """An update that failed over 1,024 times (some 13 h of retries at 60 s): its next
    backoff once overflowed, the row was retried every second with a traceback, and no Thing
    queued behind it was tried again."""
    standin.faults.fail_next(1_000_000, status=503, path=f"*/things/{THING}/properties")
    writer = make_writer(start=False, retry_initial=1.0, retry_max=60.0)
    writer.submit(TARGET, {"seq": 1})
    writer.submit(LOOSE, {"on": True})
    with sqlite3.connect(tmp_path / "state" / "outbox.db") as db:
        db.execute("UPDATE outbox SET attempts = 1100 WHERE thing_key LIKE ?", (f"%{THING}",))
    writer.start()
    wait_for(lambda: writer.stats()["delivered"] == 1, 10, "the other Thing's update delivered")
    assert delivered(standin, LOOSE_THING) == [{"on": True}]
    assert writer.stats()["retried"] == 1  # deferred once, by the capped backoff


def test_a_retry_after_longer_than_retry_max_is_waited_out(make_writer, standin: StandIn) -> None:
    """The docs promise never sooner than a Retry-After; retry_max (here 0.05 s) once cut it."""
    standin.faults.rate_limit_next(2, retry_after=1.0, path="*/properties")  # both tries of the client
    writer = make_writer()
    started = time.monotonic()
    writer.submit(TARGET, {"seq": 1})
    wait_for(lambda: writer.stats()["delivered"] == 1, 15)
    assert time.monotonic() - started >= 2.0  # 1 s inside the client, then 1 s in the outbox


def test_a_portal_answering_html_200_keeps_the_update_for_later(tmp_path: Path, secrets: SecretStore) -> None:
    """Something in between (a captive portal, a maintenance page) answers 200 with HTML:
    the API never saw the update, so it stays queued.  It was taken for a final refusal and
    dropped."""
    class Portal(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            page = b"<html>Sign in to the network</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        do_GET = do_POST = do_PUT = answer

        def log_message(self, *_args: Any) -> None:
            pass

    portal = ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=portal.serve_forever, daemon=True).start()
    config = IotStudioConfig(api_url=f"http://127.0.0.1:{portal.server_port}", max_attempts=1)
    try:
        with ApiClient(config) as client:
            writer = ThingWriter(OutboxConfig(path=tmp_path / "outbox.db", retry_initial=0.05, retry_max=0.1),
                                 secrets, client)
            writer.start()
            try:
                writer.submit(TARGET, {"seq": 1})
                wait_for(lambda: writer.stats()["retried"] >= 2, 10, "two retries")
                assert writer.stats()["failed_final"] == 0 and writer.stats()["pending"] == 1
            finally:
                writer.close()
    finally:
        portal.shutdown()
