"""Helpers for functions that call the Altair IoT Studio REST API.

A compatible stand-in for the platform's ``swx`` package: functions written for IoT Studio
import ``from swx.auth.token import get_token`` unchanged.  The bridge calls
:func:`configure` once at start so that tokens are requested from the API named in its
configuration (``[iot_studio] api_url``).
"""

from swx.config import api_url, configure

__all__ = ["api_url", "configure"]
