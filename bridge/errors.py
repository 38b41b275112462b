"""The exception tree of iot-bridge.

Every error the bridge raises on purpose derives from :class:`BridgeError`::

    BridgeError
    ├── ConfigError          a configuration that does not validate (exit status 2)
    ├── HandlerError         a function that cannot be loaded or does not follow the contract
    │   ├── HandlerLoadError     the module failed to import, or has no entry point
    │   └── ResultError          the function returned something the contract rejects
    ├── TransportError       the MQTT connection (connect, subscribe, publish)
    └── ApiError             the Altair IoT Studio REST API (``status``, ``message``, ``details``)

Foreign exceptions (paho, pydantic, requests, OSError) are translated where they enter the
bridge, with ``raise X(...) from exc`` so the cause stays in the traceback.  Exceptions raised
*by user functions* are not translated: they become the function's 500 reply.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Root of every error raised by iot-bridge."""


class ConfigError(BridgeError):
    """The configuration is invalid. ``key`` names the offending setting (dotted path)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class HandlerError(BridgeError):
    """A function cannot be used."""


class HandlerLoadError(HandlerError):
    """A function module failed to import or lacks a usable entry point."""


class ResultError(HandlerError):
    """A function returned a value the handler contract rejects (answered with 500)."""


class TransportError(BridgeError):
    """The MQTT connection failed in a way the caller must know about."""


class ApiError(BridgeError):
    """An IoT Studio API call failed.

    ``status`` is the HTTP status (0 when no response arrived), ``message`` and ``details``
    come from the API's error object ``{"error": {"status", "message", "details"}}``.
    """

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status
        self.message = message
        self.details = details or {}

    @property
    def transient(self) -> bool:
        """True when retrying the same call later may succeed (no response, 408, 429, 5xx)."""
        return self.status in (0, 408, 429) or self.status >= 500
