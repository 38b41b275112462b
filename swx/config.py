"""Where the ``swx`` helpers send their requests (the API base URL)."""

from __future__ import annotations

import threading

from bridge.config import DEFAULT_API_URL
from bridge.environment import environment

_lock = threading.Lock()
_configured_url: str | None = None


def configure(api_url: str | None) -> None:
    """Set the API base URL used when a call names no ``host`` (``None`` clears it).

    The bridge calls this at start with ``[iot_studio] api_url`` from its configuration.
    """
    global _configured_url
    with _lock:
        _configured_url = api_url.rstrip("/") if api_url else None


def api_url(host: str = "") -> str:
    """Resolve the API base URL, without a trailing slash.

    In order: the explicit ``host``; the URL given to :func:`configure`; the environment
    variable ``SWX_API_URL``; ``https://api.swx.altairone.com``.
    """
    if host:
        return host.rstrip("/")
    with _lock:
        configured = _configured_url
    if configured:
        return configured
    from_env = environment().swx_api_url
    if from_env:
        return from_env.rstrip("/")
    return DEFAULT_API_URL
