"""Waiting for a condition with a deadline (never a fixed sleep standing in for one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; return it, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


def file_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The lines of ``path`` once it has at least ``count`` of them."""
    def lines() -> list[str] | None:
        found = path.read_text().splitlines() if path.exists() else []
        return found if len(found) >= count else None

    return wait_for(lines, timeout, f"{count} line(s) in {path}")
