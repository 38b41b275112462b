"""OAuth2 client-credentials tokens for the IoT Studio API, cached and renewed before expiry.

One :class:`TokenCache` serves every credential set of a process.  Tokens are keyed by
(client id, scopes, secret digest); a token is renewed when it is within ``refresh_margin``
seconds of its ``expires_in`` (or within a quarter of its lifetime, for short-lived tokens),
invalidated by the client when the API answers 401, and revoked by
:meth:`TokenCache.revoke_all` at shutdown.

The cache does not speak HTTP itself: it is given a ``post_form(path, fields) -> dict`` callable
by the client, so retries and error translation live in one place (``client.py``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApiError

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 3600.0  # what IoT Studio clients assume when the response omits it

# post_form(path, form fields, retry) -> the decoded JSON response body; raises ApiError.
PostForm = Callable[[str, dict[str, str], bool], Any]


@dataclass(frozen=True)
class Credentials:
    """An OAuth2 client of IoT Studio and the scopes its tokens ask for."""

    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ("thing.update",)

    @classmethod
    def of(cls, client_id: str, client_secret: str, scopes: Sequence[str]) -> "Credentials":
        if isinstance(scopes, str):  # a lone "thing.read" would otherwise become t,h,i,n,g...
            scopes = scopes.split()
        return cls(client_id, client_secret, tuple(scopes))

    @property
    def key(self) -> tuple[str, tuple[str, ...], str]:
        """The cache key: the same client asking for the same scopes shares one token.

        A digest of the secret is part of it, so that a caller with a wrong secret never rides
        on a token another caller obtained (and a rotated secret gets a token of its own).
        """
        digest = hashlib.sha256(self.client_secret.encode()).hexdigest()
        return self.client_id, tuple(sorted(set(self.scopes))), digest


@dataclass
class _Token:
    access_token: str
    renew_at: float  # time.monotonic() after which a new token is fetched
    credentials: Credentials


class TokenCache:
    """Thread-safe cache of access tokens; concurrent callers of one key share one fetch."""

    def __init__(self, post_form: PostForm, refresh_margin: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._post_form = post_form
        self._margin = refresh_margin
        self._clock = clock
        self._tokens: dict[tuple[str, tuple[str, ...], str], _Token] = {}
        self._locks: dict[tuple[str, tuple[str, ...], str], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, credentials: Credentials) -> str:
        """Return a valid access token for ``credentials``, fetching one when needed."""
        key = credentials.key
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        # A per-key lock: a slow token endpoint for one client does not stall the others.
        with lock:
            token = self._tokens.get(key)
            if token is not None and self._clock() < token.renew_at:
                return token.access_token
            # The replaced token is not revoked: requests in flight may still carry it, and it
            # expires within the refresh margin anyway.
            fresh = self._fetch(credentials)
            with self._guard:
                self._tokens[key] = fresh
            return fresh.access_token

    def invalidate(self, credentials: Credentials, access_token: str) -> None:
        """Forget ``access_token`` (the API refused it) unless it was already replaced."""
        with self._guard:
            token = self._tokens.get(credentials.key)
            if token is not None and token.access_token == access_token:
                del self._tokens[credentials.key]

    def revoke_all(self) -> None:
        """Revoke every cached token (best effort) and empty the cache."""
        with self._guard:
            tokens = list(self._tokens.values())
            self._tokens.clear()
        for token in tokens:
            self._revoke(token)

    def _fetch(self, credentials: Credentials) -> _Token:
        started = self._clock()
        body = self._post_form(
            "/oauth2/token",
            {
                "grant_type": "client_credentials",
                "client_id": credentials.client_id,
                "client_secret": credentials.client_secret,
                "scope": " ".join(credentials.scopes),
            },
            True,
        )
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise ApiError(200, "token response without an access_token")
        try:
            expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        # Renew early so a request never leaves with a token about to expire in flight;
        # a quarter of the lifetime bounds the margin for short-lived tokens.
        margin = min(self._margin, expires_in / 4)
        log.debug("token fetched for client %s (expires in %.0fs)",
                  credentials.client_id, expires_in)
        return _Token(body["access_token"], started + expires_in - margin, credentials)

    def _revoke(self, token: _Token) -> None:
        fields = {"token": token.access_token, "client_id": token.credentials.client_id}
        if token.credentials.client_secret:
            fields["client_secret"] = token.credentials.client_secret
        try:
            # No retries: revocation runs at shutdown, where waiting on a dead API helps nobody.
            self._post_form("/oauth2/revoke", fields, False)
        except ApiError as exc:
            # Revocation only shortens a token's life; failing it must not fail shutdown.
            log.warning("could not revoke a token of client %s: %s",
                        token.credentials.client_id, exc)
