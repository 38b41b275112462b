"""Variables for functions, as on IoT Studio::

    from function import variables

    threshold = variables.get("threshold")  # any JSON value; "" when not defined
"""

from __future__ import annotations

from typing import Any

from bridge import secretstore


def get(name: str) -> Any:
    """Return the variable's value (any JSON value), or ``""`` when it is not defined."""
    store = secretstore.current()
    return store.variable(name) if store is not None else ""


def exists(name: str) -> bool:
    """Return True when the variable is defined."""
    store = secretstore.current()
    return store.variable_exists(name) if store is not None else False
