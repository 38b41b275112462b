"""Secrets and variables for functions, read from a directory of files.

One file per secret, named by the secret, holding its value (one trailing newline is
dropped).  Variables live in the JSON file ``function-variables`` of the same directory,
shaped ``{"name": {"value": <any JSON>, "type": "..."}}`` as IoT Studio writes it.

The directory is, in order: the one given to :func:`configure` (the bridge passes
``[secrets] dir``); ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``);
``$_SECRETS_PATH`` (IoT Studio's own runner).  Values never reach logs, reprs or
exception messages; names do.
"""

from __future__ import annotations

import json
import logging
import stat
import threading
from pathlib import Path
from typing import Any

from .environment import environment
from .errors import BridgeError

log = logging.getLogger(__name__)

VARIABLES_FILE = "function-variables"


class SecretError(BridgeError):
    """A secret the bridge itself needs is missing, unreadable or badly named."""


def check_name(name: str) -> str:
    """Return ``name`` if it can only name a file directly inside the directory."""
    if (
        not isinstance(name, str)
        or not name
        or name == "."
        or ".." in name
        or any(c in name for c in "/\\\0")
    ):
        raise SecretError(f"invalid secret name {name!r}: no path separators or '..' allowed")
    return name


class SecretStore:
    """The secrets and variables of one directory.  Files are read on every call, so a
    rotated secret is picked up without a restart."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def __repr__(self) -> str:
        return f"SecretStore({str(self.dir)!r})"

    def read(self, name: str) -> str:
        """The value of secret ``name``; raises :class:`SecretError` if it cannot be read."""
        path = self.dir / check_name(name)
        try:
            value = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise SecretError(f"secret {name!r} not found in {self.dir}") from exc
        except (OSError, ValueError) as exc:
            # Only the exception's type is shown: a decoding error would quote the contents.
            raise SecretError(f"secret {name!r} cannot be read: {type(exc).__name__}") from exc
        if value.endswith("\r\n"):
            return value[:-2]
        return value[:-1] if value.endswith("\n") else value

    def get(self, name: str) -> str:
        """The value of secret ``name``, or ``""`` when it is missing or unreadable."""
        try:
            return self.read(name)
        except SecretError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                log.warning("%s", exc)
            return ""

    def exists(self, name: str) -> bool:
        """True when a secret file ``name`` exists (invalid names are never found)."""
        try:
            return (self.dir / check_name(name)).is_file()
        except (SecretError, OSError):  # OSError: a name too long for the file system
            return False

    def variables(self) -> dict[str, Any]:
        """All variables as ``{name: value}``; empty when the file is missing or malformed."""
        path = self.dir / VARIABLES_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            # No contents in the message: a decoding error would quote them.
            log.warning("cannot read variables file %s: %s", path, type(exc).__name__)
            return {}
        if not isinstance(data, dict):
            log.warning("variables file %s is not a JSON object", path)
            return {}
        result: dict[str, Any] = {}
        for name, entry in data.items():
            if isinstance(entry, dict) and "value" in entry:
                result[name] = entry["value"]
            else:
                log.warning("variable %r in %s has no 'value'; ignored", name, path)
        return result

    def variable(self, name: str) -> Any:
        """The value of variable ``name`` (any JSON value), or ``""`` when it is missing."""
        return self.variables().get(name, "")

    def variable_exists(self, name: str) -> bool:
        """True when variable ``name`` is defined."""
        return name in self.variables()


_lock = threading.Lock()
_configured: Path | None = None


def configure(directory: str | Path | None) -> None:
    """Set the secrets directory for this process (``None`` falls back to the environment)."""
    global _configured
    with _lock:
        _configured = Path(directory) if directory is not None else None


def location() -> Path | None:
    """The secrets directory in effect, or ``None`` when nothing names one."""
    with _lock:
        configured = _configured
    if configured is not None:
        return configured
    env = environment()
    return env.credentials_directory or env.secrets_path


def current() -> SecretStore | None:
    """The store for :func:`location`, or ``None`` when no directory is known."""
    directory = location()
    return SecretStore(directory) if directory is not None else None


def check_permissions(directory: str | Path) -> list[str]:
    """Warnings for secret files that group or others may read (and for a missing directory)."""
    root = Path(directory)
    if not root.is_dir():
        return [f"secrets directory {root} does not exist or is not a directory"]
    warnings: list[str] = []
    for path in sorted(root.iterdir()):
        # Kubernetes mounts keep their bookkeeping in "..data" style entries: not secrets.
        if path.name.startswith(".."):
            continue
        try:
            mode = path.stat().st_mode  # follows symlinks: the target's mode is what counts
        except OSError:
            continue
        if stat.S_ISREG(mode) and mode & (stat.S_IRGRP | stat.S_IROTH):
            who = " and ".join(
                w for w, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH)) if mode & bit
            )
            warnings.append(
                f"secret file {path} is readable by {who} (mode {stat.S_IMODE(mode):04o}); "
                "restrict it with chmod 600"
            )
    return warnings
