"""Errors raised by the ``swx`` helpers.

They belong to the bridge's exception tree (:class:`bridge.errors.ApiError`), so a function
may catch either ``swx.errors.ResponseError`` or ``bridge.errors.ApiError``.
"""

from __future__ import annotations

from typing import Any

import requests

from bridge.errors import ApiError

# Enough of a non-JSON body (an HTML page from a proxy, say) to tell what answered.
_BODY_EXCERPT = 200


class ResponseError(ApiError):
    """The API answered with an error, or did not answer at all (``status_code`` 0).

    ``message`` and ``details`` come from the API's error object
    ``{"error": {"status", "message", "details"}}``.
    """

    def __init__(
        self, status_code: int, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(status_code, message, details)

    @property
    def status_code(self) -> int:
        """The HTTP status of the response (0 when none arrived)."""
        return self.status

    def __str__(self) -> str:
        text = super().__str__()
        description = self.details.get("error_description")
        return f"{text}: {description}" if description else text


class OAuth2Error(ResponseError):
    """A token request was refused (bad client credentials, scope not allowed, ...)."""


class TokenRevokeError(ResponseError):
    """A token could not be revoked.

    Also raised, with ``status_code`` 0 and ``details["reason"] == "not_revocable"``, for a
    :class:`~swx.auth.token.Token` that carries no client credentials to revoke it with.
    """

    @property
    def transient(self) -> bool:
        # A token built without credentials will never be revocable, however often one tries.
        if self.details.get("reason") == "not_revocable":
            return False
        return super().transient


def error_from_response(
    response: requests.Response, cls: type[ResponseError] = ResponseError
) -> ResponseError:
    """Build ``cls`` from an error response, whatever its body looks like."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            details = error.get("details")
            message = str(error.get("message") or response.reason or "error")
            return cls(status, message, details if isinstance(details, dict) else None)
        if isinstance(error, str):
            # The plain OAuth 2.0 shape (RFC 6749 section 5.2), for servers that use it.
            description = body.get("error_description")
            return cls(status, error, {"error_description": description} if description else None)
    excerpt = " ".join(response.text.split())[:_BODY_EXCERPT]
    reason = response.reason or "error"
    return cls(status, f"{reason} (non-JSON body: {excerpt!r})" if excerpt else reason, None)


def error_from_exception(
    exc: requests.RequestException, url: str, cls: type[ResponseError] = ResponseError
) -> ResponseError:
    """Build ``cls`` (status 0) for a request that got no response.

    requests' own message names the URL and the socket error, never the request body.
    """
    kind = "timed out" if isinstance(exc, requests.Timeout) else "failed"
    return cls(0, f"request to {url} {kind}: {str(exc)[:_BODY_EXCERPT]}", None)
