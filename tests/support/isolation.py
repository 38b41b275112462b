"""Undo what in-process runs of the bridge's entry points change in the test process."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Restore the root logger's handlers and level, the ``bridge`` logger's level and
    ``sys.stderr`` (bridge.logs.setup replaces stderr to tag what functions print)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("bridge").level, sys.stderr)
    try:
        yield
    finally:
        handlers, level, bridge_level, stderr = saved
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("bridge").setLevel(bridge_level)
        sys.stderr = stderr
