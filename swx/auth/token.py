"""Access tokens for the IoT Studio API, the way functions written for the platform use them::

    from swx.auth.token import get_token

    with get_token(CLIENT_ID, secrets.get("client_secret"), ["thing.update"]) as token:
        requests.put(url, headers={"Authorization": f"Bearer {token}"}, json={"temperature": 27})

The token is revoked when the ``with`` block ends, also when the block raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import requests

from swx.config import api_url
from swx.errors import (
    OAuth2Error,
    ResponseError,
    TokenRevokeError,
    error_from_exception,
    error_from_response,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
# What the API is assumed to grant when its answer names no lifetime.
DEFAULT_EXPIRES_IN = 3600


@dataclass
class Token:
    """An access token and what the API said about it.

    ``str(token)`` is the access token.  The token strings are left out of ``repr()`` so a
    logged token does not leak the credential.
    """

    host: str
    access_token: str = field(repr=False)
    expires_in: int = DEFAULT_EXPIRES_IN
    id_token: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)
    scope: str = ""
    token_type: str = "bearer"
    # The credentials revoke() needs; set by get_token().
    _client_id: str = field(default="", repr=False, compare=False, kw_only=True)
    _client_secret: str = field(default="", repr=False, compare=False, kw_only=True)
    _timeout: float = field(default=DEFAULT_TIMEOUT, repr=False, compare=False, kw_only=True)
    revoked: bool = field(default=False, init=False, compare=False)

    def __str__(self) -> str:
        return self.access_token

    def revoke(self) -> None:
        """Revoke the token at the API; a second call does nothing.

        Raises :class:`~swx.errors.TokenRevokeError` when the API refuses or cannot be
        reached, or when the token was built by hand without client credentials.
        """
        if self.revoked:
            return
        if not self._client_id:
            raise TokenRevokeError(
                0,
                "this token has no client credentials to revoke it with; use revoke_token()",
                {"reason": "not_revocable"},
            )
        _revoke(self.host, self.access_token, self._client_id, self._client_secret, self._timeout)
        self.revoked = True

    def __enter__(self) -> Token:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.revoke()
            return
        # The block's own exception is the one the caller needs to see: a failed revoke is
        # only logged here, never raised over it.
        try:
            self.revoke()
        except ResponseError as revoke_error:
            log.warning("could not revoke the token after the block failed: %s", revoke_error)


def get_token(
    client_id: str,
    client_secret: str,
    scopes: Sequence[str] | str,
    host: str = "",
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Token:
    """Request an access token with the OAuth 2.0 client credentials grant.

    ``scopes`` is a list such as ``["thing.read", "thing.update"]`` (a single
    space-separated string is accepted too).  ``host`` defaults as described in
    :func:`swx.config.api_url`.  Raises :class:`~swx.errors.OAuth2Error` when the API
    refuses, or with ``status_code`` 0 when it cannot be reached within ``timeout`` seconds.
    """
    base = api_url(host)
    scope = scopes if isinstance(scopes, str) else " ".join(scopes)
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
        "scope": scope,
    }
    response = _post(f"{base}/oauth2/token", form, timeout, OAuth2Error)
    if not response.ok:
        raise error_from_response(response, OAuth2Error)
    try:
        data: Any = response.json()
    except ValueError as exc:
        raise OAuth2Error(response.status_code, "the token response is not JSON") from exc
    access_token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(access_token, str) or not access_token:
        raise OAuth2Error(response.status_code, "the token response has no access_token")
    # Fields the API may add later are ignored; absent ones get the documented defaults.
    return Token(
        host=base,
        access_token=access_token,
        expires_in=_as_int(data.get("expires_in"), DEFAULT_EXPIRES_IN),
        id_token=str(data.get("id_token") or ""),
        refresh_token=str(data.get("refresh_token") or ""),
        scope=str(data.get("scope") or scope),
        token_type=str(data.get("token_type") or "bearer"),
        _client_id=client_id,
        _client_secret=client_secret,
        _timeout=timeout,
    )


def revoke_token(
    token: Token | str,
    client_id: str,
    client_secret: str = "",
    host: str = "",
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Revoke an access token (a :class:`Token` or the bare string).

    ``host`` defaults to the token's own host, then as in :func:`swx.config.api_url`.
    Raises :class:`~swx.errors.TokenRevokeError` unless the API answers 200 or 204.
    """
    if isinstance(token, Token):
        _revoke(host or token.host, token.access_token, client_id, client_secret, timeout)
        token.revoked = True
    else:
        _revoke(host, token, client_id, client_secret, timeout)


def _revoke(
    host: str, access_token: str, client_id: str, client_secret: str, timeout: float
) -> None:
    form = {"token": access_token, "client_id": client_id}
    if client_secret:
        form["client_secret"] = client_secret
    response = _post(f"{api_url(host)}/oauth2/revoke", form, timeout, TokenRevokeError)
    if response.status_code not in (200, 204):
        raise error_from_response(response, TokenRevokeError)


def _post(
    url: str, form: dict[str, str], timeout: float, error_cls: type[ResponseError]
) -> requests.Response:
    # A dict for ``data=`` makes requests URL-encode every field: a secret containing
    # "&", "=", "+" or spaces arrives intact.
    try:
        return requests.post(
            url, data=form, timeout=timeout, headers={"Accept": "application/json"}
        )
    except requests.RequestException as exc:
        raise error_from_exception(exc, url, error_cls) from exc


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default
