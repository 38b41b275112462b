"""Secrets for functions, as on IoT Studio::

    import function.secrets as secrets

    if secrets.exists("my_password"):
        password = secrets.get("my_password")
"""

from __future__ import annotations

from bridge import secretstore


def get(secret_name: str) -> str:
    """Return the value of the secret, or ``""`` when it is not found. Never raises."""
    store = secretstore.current()
    return store.get(secret_name) if store is not None else ""


def exists(secret_name: str) -> bool:
    """Return True when the secret is found."""
    store = secretstore.current()
    return store.exists(secret_name) if store is not None else False
