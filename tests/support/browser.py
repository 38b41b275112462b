"""Debian's chromium, headless, as a person's browser: what a page shows, and a screenshot.

Installed by ``make test`` (apt-get install chromium); nothing is downloaded by a test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    exe = chromium()
    if exe is None:
        raise AssertionError("chromium is not installed: run `make test`, which installs it")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, timeout=timeout)


def dump_dom(url: str, *, width: int = 412, height: int = 915, timeout: float = 60) -> str:
    """The DOM after the page loaded, as the browser built it (what a person would see)."""
    out = _run([f"--window-size={width},{height}", "--dump-dom", url], timeout)
    if out.returncode != 0 or not out.stdout:
        raise AssertionError(f"chromium --dump-dom failed ({out.returncode}): {out.stderr.decode(errors='replace')[-2000:]}")
    return out.stdout.decode("utf-8", "replace")


def screenshot(url: str, path: Path, *, width: int = 412, height: int = 915, timeout: float = 60) -> Path:
    """A PNG of the page at ``width`` x ``height`` (a phone by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _run([f"--window-size={width},{height}", f"--screenshot={path}", url], timeout)
    if out.returncode != 0 or not path.exists():
        raise AssertionError(f"chromium --screenshot failed ({out.returncode}): {out.stderr.decode(errors='replace')[-2000:]}")
    return path
