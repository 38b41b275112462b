"""One bridge per state file: an exclusive lock on ``<file>.lock``, held while the process lives.

Two bridges writing one reply store or outbox would corrupt each other's view of it (each
keeps its own index of the rows in memory, and takes rows the other one owns).  Several
bridges on one gateway (docs/deployment.md) each get their own state directory; one started
against a file another one holds exits with status 2 naming the file.

A POSIX record lock (``fcntl.lockf``): the kernel drops it when the process ends, however it
ends, and a child process (a function's subprocess, a forked worker) does not inherit it, so
it never outlives the bridge that took it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import ConfigError


class FileLock:
    """Holds ``<path>.lock`` until :meth:`release` or the end of the process."""

    def __init__(self, path: Path, key: str) -> None:
        """Lock the file beside ``path``; ``key`` is the config key naming ``path`` (for the
        error).  Raises :class:`ConfigError` when another process holds it."""
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot create the lock file {self.lock_path}: {exc}", key=key) from exc
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"{key}: {path} is in use by another bridge{holder}; give each bridge its own "
                f"file (iot-bridge run --state-dir, see docs/deployment.md)", key=key) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def _holder(self) -> str:
        # Read through the descriptor already open: opening the file again and closing it
        # would drop a lock this process held (POSIX locks belong to the process).
        try:
            pid = os.pread(self._fd, 32, 0).decode().strip()  # type: ignore[arg-type]
        except OSError:
            return ""
        return f" (process {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None
