"""Logging: one handler on the real stderr; functions' logs and stderr tagged with their name.

While a function runs, :data:`current_function` holds its name.  A filter stamps every record
with it (``-`` outside functions) and drops function records below ``function_level`` (the
platform logs INFO and up).  ``sys.stderr`` is replaced by a writer that turns what a function
prints there into log records, as IoT Studio does; writes outside functions go straight through.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
from typing import TextIO

current_function: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_function", default=None
)

FORMAT = "%(asctime)s %(levelname)-7s [%(function)s] %(name)s: %(message)s"
function_log = logging.getLogger("function")


class _FunctionFilter(logging.Filter):
    def __init__(self, function_level: int) -> None:
        super().__init__()
        self.function_level = function_level

    def filter(self, record: logging.LogRecord) -> bool:
        name = current_function.get()
        record.function = name or "-"
        return name is None or record.levelno >= self.function_level


class _StderrToLog(io.TextIOBase):
    """Replaces ``sys.stderr``: inside a function, each line becomes a WARNING record."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self._partial: dict[str, str] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        name = current_function.get()
        if name is None:
            return self.real.write(text)
        buffered = self._partial.pop(name, "") + text
        *lines, rest = buffered.split("\n")
        for line in lines:
            if line:
                function_log.warning("%s", line)
        if rest:
            self._partial[name] = rest[-65536:]  # bounded: a function never ending its line
        return len(text)

    def flush(self) -> None:
        name = current_function.get()
        if name is not None and name in self._partial:
            function_log.warning("%s", self._partial.pop(name))
        self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()


def setup(level: str = "INFO", function_level: str = "INFO") -> None:
    """Configure the root logger once for the daemon and CLI (idempotent)."""
    root = logging.getLogger()
    real_stderr = sys.__stderr__ or sys.stderr
    for handler in list(root.handlers):
        if getattr(handler, "_iot_bridge", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(real_stderr)
    handler._iot_bridge = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_FunctionFilter(logging.getLevelName(function_level)))
    root.addHandler(handler)
    root.setLevel(min(logging.getLevelName(level), logging.getLevelName(function_level)))
    logging.getLogger("bridge").setLevel(level)
    if not isinstance(sys.stderr, _StderrToLog):
        sys.stderr = _StderrToLog(real_stderr)
