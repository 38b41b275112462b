"""Seed data, fault injection and the request log of the IoT Studio stand-in.

Kept apart from :mod:`bridge.iotstudio.standin` (the HTTP side) so each stays readable.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedClient(_Model):
    """An OAuth client: ``scopes`` are the scopes it may request (``thing`` covers ``thing.*``)."""

    id: Annotated[str, Field(min_length=1)]
    secret: Annotated[str, Field(min_length=1, repr=False)]
    scopes: list[str] = []


class SeedThing(_Model):
    space: Annotated[str, Field(min_length=1)]
    uid: Annotated[str, Field(min_length=1)]
    category: str | None = None
    properties: dict[str, Any] = {}


class Seed(_Model):
    """What the stand-in knows at start."""

    clients: list[SeedClient] = []
    things: list[SeedThing] = []
    expires_in: Annotated[int, Field(ge=1)] = 3600
    # Merged into every token response, e.g. to check that clients ignore unknown fields.
    token_extra: dict[str, Any] = {}


def parse_seed(data: Mapping[str, Any]) -> Seed:
    """Validate a seed mapping; raise :class:`ConfigError` naming what is wrong."""
    try:
        return Seed.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid stand-in seed: {problems}") from exc


def load_seed(path: str | Path) -> Seed:
    """Read a seed from a ``.json`` file, or from TOML for any other name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read stand-in seed {path}: {exc}") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"stand-in seed {path} is malformed: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"stand-in seed {path} is not an object")
    return parse_seed(data)


def scope_covers(granted: Iterable[str], needed: str) -> bool:
    """True when ``granted`` includes ``needed`` or its broader resource scope."""
    granted = set(granted)
    return needed in granted or needed.partition(".")[0] in granted


@dataclass
class Grant:
    """An issued access token."""

    client_id: str
    scopes: frozenset[str]
    expires_at: float
    revoked: bool = False


@dataclass
class ThingState:
    """A Thing as the stand-in holds it; ``history`` gets one entry per PUT with history on."""

    category: str | None
    properties: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in answered; ``status`` 0 when the connection was dropped.

    ``json`` is the parsed body of API calls; OAuth bodies hold credentials and are not kept.
    """

    method: str
    path: str
    status: int
    query: str = ""
    json: Any = None


@dataclass
class FaultRule:
    """One injected fault and how many more requests it applies to."""

    kind: Literal["fail", "rate_limit", "delay"]
    remaining: int
    method: str | None
    path: str | None
    status: int = 503
    message: str = "Service unavailable"
    retry_after: float = 1
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.path is None or fnmatch.fnmatchcase(path, self.path)
        )


@dataclass(frozen=True)
class Verdict:
    """What the faults decided for one request."""

    delay: float = 0.0
    down: Literal["error", "close"] | None = None
    failure: FaultRule | None = None


class Faults:
    """Faults to inject, consumed request by request.  Thread-safe.

    ``method`` and ``path`` (a glob such as ``"*/properties"``) restrict a fault to the
    matching requests.  The ``/__`` control routes are never affected.
    """

    OPS = ("fail_next", "rate_limit_next", "delay_next", "set_down", "expire_tokens", "clear")

    def __init__(self, expire_tokens: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._down: Literal["error", "close"] | None = None
        self._expire_tokens = expire_tokens

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        message: str | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` and an error object."""
        text = message or {500: "Internal server error", 502: "Bad gateway"}.get(
            status, "Service unavailable" if status >= 500 else "Injected failure"
        )
        self._add(FaultRule("fail", n, method, path, status=status, message=text))

    def rate_limit_next(
        self,
        n: int = 1,
        retry_after: float = 1,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with 429 and ``Retry-After``."""
        self._add(FaultRule("rate_limit", n, method, path, status=429, retry_after=retry_after))

    def delay_next(
        self,
        n: int = 1,
        seconds: float = 1.0,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Hold the next ``n`` matching requests for ``seconds`` before answering them."""
        self._add(FaultRule("delay", n, method, path, seconds=seconds))

    def set_down(self, down: bool = True, mode: Literal["error", "close"] = "error") -> None:
        """While down, answer everything with 503 (``mode="error"``) or drop the connection."""
        if mode not in ("error", "close"):
            raise ValueError(f"mode must be 'error' or 'close', not {mode!r}")
        with self._lock:
            self._down = mode if down else None

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (new ones are valid again)."""
        self._expire_tokens()

    def clear(self) -> None:
        """Forget pending faults and come back up."""
        with self._lock:
            self._rules.clear()
            self._down = None

    def apply(self, op: str, args: Mapping[str, Any]) -> None:
        """Run one of :attr:`OPS` by name (the ``POST /__faults`` control route)."""
        if op not in self.OPS:
            raise ValueError(f"unknown fault op {op!r}; one of {', '.join(self.OPS)}")
        getattr(self, op)(**args)

    def take(self, method: str, path: str) -> Verdict:
        """Consume the faults that apply to this request."""
        with self._lock:
            delay = self._consume("delay", method, path)
            if self._down is not None:
                return Verdict(delay.seconds if delay else 0.0, down=self._down)
            failure = self._consume("fail", method, path, also="rate_limit")
            return Verdict(delay.seconds if delay else 0.0, failure=failure)

    def _add(self, rule: FaultRule) -> None:
        if rule.remaining < 1:
            raise ValueError("n must be at least 1")
        with self._lock:
            self._rules.append(rule)

    def _consume(self, kind: str, method: str, path: str, also: str = "") -> FaultRule | None:
        for rule in self._rules:
            if rule.kind in (kind, also) and rule.matches(method, path):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
                return rule
        return None
