"""A durable, bounded FIFO of pending Thing property updates, in SQLite (WAL mode).

Rows are delivered strictly in insertion order *per Thing* (``thing_key``): only the oldest row
of a Thing is ever handed out, so a newer update never overtakes an older pending one.  Things
do not wait for each other.  The queue survives restarts: a new :class:`Outbox` on the same
file continues where the last one stopped.  When it holds ``max_items`` rows, adding one drops
the oldest row of all (the freshest state is the most useful to a Thing).

Only this module touches the database; :mod:`.automation` decides what to deliver and when.
Row bodies are user data: they are stored (the file is created mode 0600) but never logged.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import BridgeError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    thing_key TEXT NOT NULL,
    target TEXT NOT NULL,           -- JSON: where to write and which secrets to use
    body TEXT NOT NULL,             -- JSON: the properties object
    created REAL NOT NULL,          -- time.time() of submit; wall clock survives restarts
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0 -- time.time() before which the row is not retried
);
CREATE INDEX IF NOT EXISTS outbox_thing ON outbox (thing_key, id);
"""


class OutboxError(BridgeError):
    """The outbox database cannot be opened or written (or the outbox is closed)."""


@dataclass(frozen=True)
class Item:
    """One pending update, as stored."""

    id: int
    thing_key: str
    target: str
    body: str
    created: float
    attempts: int


class Outbox:
    """The SQLite queue.  Thread-safe; every method is a short transaction."""

    def __init__(self, path: str | os.PathLike[str], max_items: int, fsync: bool = False) -> None:
        self.path = Path(path)
        self.max_items = max_items
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create the file owner-only before SQLite opens it: it holds user payloads.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a crash of the process; FULL: also a loss of power.
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("the outbox is closed")
        return self._db

    def put(self, thing_key: str, target: str, body: str, now: float) -> int:
        """Append an update; returns how many old rows were dropped to stay within bounds."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                excess = count + 1 - self.max_items
                if excess > 0:
                    db.execute("DELETE FROM outbox WHERE id IN "
                               "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
                db.execute("INSERT INTO outbox (thing_key, target, body, created) VALUES (?,?,?,?)",
                           (thing_key, target, body, now))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                raise OutboxError(f"cannot write to outbox {self.path}: {exc}") from exc
            return max(excess, 0)

    def due(self, now: float) -> list[Item]:
        """The oldest row of every Thing whose retry time has come, oldest first."""
        rows = self._query(
            "SELECT id, thing_key, target, body, created, attempts FROM outbox "
            "WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY thing_key) AND next_at <= ? "
            "ORDER BY id", (now,))
        return [Item(*row) for row in rows]

    def next_due(self) -> float | None:
        """The earliest retry time among the head rows, or None when the outbox is empty."""
        rows = self._query("SELECT MIN(next_at) FROM outbox WHERE id IN "
                           "(SELECT MIN(id) FROM outbox GROUP BY thing_key)", ())
        return rows[0][0] if rows else None

    def remove(self, item_id: int) -> None:
        """Delete a row (delivered, or failed for good)."""
        self._write("DELETE FROM outbox WHERE id = ?", (item_id,))

    def defer(self, item_id: int, next_at: float) -> None:
        """Count a failed attempt and hold the row (and so its Thing) until ``next_at``."""
        self._write("UPDATE outbox SET attempts = attempts + 1, next_at = ? WHERE id = ?",
                    (next_at, item_id))

    def expire(self, created_before: float) -> int:
        """Delete rows created before the given time; returns how many."""
        return self._write("DELETE FROM outbox WHERE created < ?", (created_before,))

    def pending(self) -> int:
        """How many updates wait."""
        return int(self._query("SELECT COUNT(*) FROM outbox", ())[0][0])

    def close(self) -> None:
        """Close the database (idempotent); pending rows stay for the next process."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._conn().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        with self._lock:
            try:
                return self._conn().execute(sql, args).rowcount
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write to outbox {self.path}: {exc}") from exc


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction was open
