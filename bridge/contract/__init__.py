"""The handler contract: what a function receives and how its result becomes a response.

This module is the compatibility surface with Altair IoT Studio's Python template
(``handle(req)``) and OpenFaaS's python3-http template (``handle(event, context)``).  It knows
nothing about MQTT, so any front end (MQTT, the ``invoke`` command, a future HTTP server or
worker process) builds an :class:`Event`, calls the function, and turns what came back, or what
it raised, into a :class:`Response` with the :class:`Rules` of the function's style
(:func:`rules_for`): :data:`IOT_STUDIO` or :data:`OPENFAAS`.  docs/functions.md tables both.

``event`` (what a function receives), ``response`` (what a call ends in, the error object),
``iotstudio`` and ``openfaas`` (each platform's rules); everything is imported from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .event import METHODS, Context, Event, RequestHeaders
from .iotstudio import normalise
from .openfaas import openfaas_error, openfaas_response
from .response import (
    ERROR_KINDS,
    HTML_TYPE,
    JSON_TYPE,
    TEXT_TYPE,
    Failure,
    Response,
    error_body,
    error_response,
    header_map,
)

@dataclass(frozen=True, slots=True)
class Rules:
    """How one platform turns a function's result, or its exception, into a response."""

    name: str
    response: Callable[[Any], Response]  # raises ResultError for a result that breaks the rules
    error: Callable[[BaseException, str | None], Response]  # (exception, the function's file)


IOT_STUDIO = Rules("IoT Studio", normalise, error_response)
OPENFAAS = Rules("OpenFaaS python3-http", openfaas_response, openfaas_error)


def rules_for(wants_context: bool) -> Rules:
    """The rules of a function's style: ``handle(event, context)`` is OpenFaaS's."""
    return OPENFAAS if wants_context else IOT_STUDIO


__all__ = [
    "ERROR_KINDS", "HTML_TYPE", "IOT_STUDIO", "JSON_TYPE", "METHODS", "OPENFAAS", "TEXT_TYPE", "Context",
    "Event", "Failure", "RequestHeaders", "Response", "Rules", "error_body", "error_response", "header_map",
    "normalise", "openfaas_error", "openfaas_response", "rules_for",
]
