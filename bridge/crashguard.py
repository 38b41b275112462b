"""No crash loop: a request that killed the bridge twice is answered, not run a third time.

When the bridge dies with a QoS >= 1 request in hand (a function that kills the daemon in
``thread`` mode, an OOM kill, a power cut), the broker redelivers the request to the next
start with DUP set; if the function kills the bridge again, the restart loop would never end
and every other route would be down meanwhile.

The rule: the first delivery costs nothing (no write).  A redelivered request (DUP set, the
rare case) is counted on disk before its function runs, with an fsync, so the count survives
a power cut; the record is deleted when the request is answered.  A request that arrives with
two runs already counted (the first, and one redelivery) is answered 500 "this request
crashed the bridge twice; not run again" and acknowledged without running.  Requests left
unfinished by a clean shutdown are not counted as deaths.

Limits: a broker that resends without DUP (aedes) is not covered; a request redelivered after
a network drop while the bridge ran on (the ledger recognises those) never reaches this.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from pathlib import Path

from .errors import BridgeError
from .message import Inbound

log = logging.getLogger("bridge.crashguard")

DEATHS_ALLOWED = 2


def attempt_key(msg: Inbound) -> str:
    """Who the request is, whatever its packet id: topic, payload, correlation data."""
    digest = hashlib.blake2b(msg.payload, digest_size=16)
    digest.update(msg.correlation_data or b"")
    return f"{digest.hexdigest()}:{msg.topic}"


class CrashGuard:
    """Counts the runs of redelivered requests in a small SQLite file (``attempts``)."""

    def __init__(self, path: Path, max_age: float) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=full")  # a count must survive a power cut
            self._db.execute("create table if not exists attempts "
                             "(key text primary key, runs integer not null, created real not null)")
            # A request the broker no longer holds for us (its session expired) never returns.
            self._db.execute("delete from attempts where created < ?", (time.time() - max_age,))
        except sqlite3.Error as exc:
            raise BridgeError(f"crash guard {path}: {exc}") from exc
        self._running: dict[str, int] = {}  # key -> admitted runs of it in progress in this process

    def admit(self, msg: Inbound) -> tuple[bool, str]:
        """For a redelivered request: (may it run?, its key).  Counts this run on disk first.

        While a request with the same key runs in this process, another one is a different
        request that happens to be identical (a poll such as ``{}`` from two devices): it is
        admitted without counting, or two identical requests in hand at one death would be
        taken for one request that died twice.
        """
        key = attempt_key(msg)
        if self._running.get(key):
            self._running[key] += 1
            return True, key
        row = self._db.execute("select runs from attempts where key = ?", (key,)).fetchone()
        runs = row[0] if row else 1  # no record: the first delivery ran and did not finish
        if runs >= DEATHS_ALLOWED:
            log.error("a request on %s crashed the bridge %d times; answered 500 without running it",
                      msg.topic, runs)
            self.forget(key)
            return False, key
        try:
            self._db.execute("insert or replace into attempts values (?, ?, ?)", (key, runs + 1, time.time()))
        except sqlite3.Error as exc:  # it runs anyway: losing the guard beats losing the request
            log.error("crash guard write failed: %s", exc)
        self._running[key] = 1
        return True, key

    def forget(self, key: str) -> None:
        """The request was answered (or refused): no run of it is pending any more."""
        running = self._running.get(key, 0)
        if running > 1:
            self._running[key] = running - 1  # an identical request still runs: keep its count
            return
        self._running.pop(key, None)
        try:
            self._db.execute("delete from attempts where key = ?", (key,))
        except sqlite3.Error as exc:
            log.error("crash guard delete failed: %s", exc)

    def spare(self, msg: Inbound, key: str | None) -> None:
        """A clean shutdown leaves ``msg`` unfinished: its current run did not crash anything."""
        key = key or attempt_key(msg)
        row = self._db.execute("select runs from attempts where key = ?", (key,)).fetchone()
        runs = row[0] if row else 1
        try:
            self._db.execute("insert or replace into attempts values (?, ?, ?)", (key, runs - 1, time.time()))
        except sqlite3.Error as exc:
            log.error("crash guard write failed: %s", exc)

    def close(self) -> None:
        self._db.close()
