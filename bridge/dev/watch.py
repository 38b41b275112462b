"""``make run``'s edit loop: watch the functions and the config, reload the bridge on a change.

watchfiles (inotify, with debouncing) reports changes; each batch is described in one line
and the bridge is sent SIGHUP, which re-reads the config and re-imports every function on the
same MQTT session.  A function that no longer imports is logged by the bridge at once and its
route answers 503 until it is fixed (and saved again).
"""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

from watchfiles import Change, watch

_VERBS = {Change.added: "added", Change.modified: "modified", Change.deleted: "deleted"}


class Relevant:
    """A watchfiles filter: Python files under ``handlers_dir`` and the config file itself."""

    def __init__(self, handlers_dir: Path, config_path: Path) -> None:
        self.handlers_dir = handlers_dir.resolve()
        self.config_path = config_path.resolve()

    def __call__(self, _change: Change, path: str) -> bool:
        p = Path(path)
        if p == self.config_path:
            return True
        return (p.suffix == ".py" and "__pycache__" not in p.parts and p.is_relative_to(self.handlers_dir))


def describe(changes: Iterable[tuple[Change, str]], root: Path) -> str:
    """``handlers/echo.py modified, config/bridge.toml modified`` (paths relative to ``root``)."""
    seen: dict[str, str] = {}
    for change, path in sorted(changes, key=lambda c: c[1]):
        p = Path(path)
        shown = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
        seen[shown] = _VERBS.get(change, "changed")
    return ", ".join(f"{path} {verb}" for path, verb in seen.items())


def answers(url: str) -> bool:
    """True when the bridge's HTTP endpoint answers at all (its signal handlers are in place)."""
    try:
        with urllib.request.urlopen(url + "__/health", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # 503 (starting, broker away) is an answer too
    except OSError:
        return False


def reload_on_change(pid: int, handlers_dir: Path, config_path: Path, root: Path, stop: threading.Event,
                     ready: Callable[[], bool], say: Callable[[str], None] = print) -> None:
    """Until ``stop`` is set: on each batch of changes, say what changed and SIGHUP ``pid``.

    ``ready()`` tells whether the bridge can take SIGHUP yet; until it can, the reload waits.
    """
    watched = [p for p in {handlers_dir.resolve(), config_path.resolve().parent} if p.is_dir()]
    for changes in watch(*watched, watch_filter=Relevant(handlers_dir, config_path), stop_event=stop,
                         debounce=300, raise_interrupt=False):
        what = describe(changes, root)
        while not ready():  # SIGHUP before the bridge's handler is in place would end it
            if stop.wait(0.2):
                return
        say(f"make run: {what}; reloading (kill -HUP {pid})")
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return
