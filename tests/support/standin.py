"""pytest fixtures around the IoT Studio stand-in (:mod:`bridge.iotstudio.standin`).

Load them with ``pytest_plugins = ["tests.support.standin"]``.  ``standin`` is a started
stand-in seeded with :data:`SEED`; override the ``standin_seed`` fixture to seed differently.

PYTEST_DONT_REWRITE: test modules import the names below before pytest registers this
module as a plugin; the marker keeps pytest from warning, and the helpers raise their own
AssertionError messages instead of relying on assert rewriting.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import requests

import swx
from bridge import secretstore
from bridge.iotstudio.standin import StandIn

SPACE = "demo"
CATEGORY = "sensors"
THING = "thing-1"  # in CATEGORY
LOOSE_THING = "thing-2"  # in no category
CLIENT_ID = "writer"
# Characters that break a form body that is not URL-encoded.
CLIENT_SECRET = "s3cr&t=a+b c%"
READER_ID = "reader"
READER_SECRET = "reader-secret"

SEED: dict[str, Any] = {
    "clients": [
        {"id": CLIENT_ID, "secret": CLIENT_SECRET, "scopes": ["thing", "category.read"]},
        {"id": READER_ID, "secret": READER_SECRET, "scopes": ["thing.read"]},
    ],
    "things": [
        {"space": SPACE, "uid": THING, "category": CATEGORY, "properties": {"temperature": 20}},
        {"space": SPACE, "uid": LOOSE_THING, "properties": {"on": False}},
    ],
}


def bearer(token: object) -> dict[str, str]:
    """The Authorization header for ``token`` (a string or an ``swx`` Token)."""
    return {"Authorization": f"Bearer {token}"}


def fetch_token(
    api: StandIn, client: str = CLIENT_ID, secret: str = CLIENT_SECRET, scope: str = ""
) -> str:
    """An access token from the stand-in's token endpoint (all allowed scopes by default)."""
    form = {"grant_type": "client_credentials", "client_id": client, "client_secret": secret}
    if scope:
        form["scope"] = scope
    reply = requests.post(f"{api.url}/oauth2/token", data=form, timeout=5)
    if reply.status_code != 200:
        raise AssertionError(f"token request failed: {reply.status_code} {reply.text}")
    return str(reply.json()["access_token"])


def call(
    api: StandIn, method: str, path: str, token: str | None = None, **kwargs: Any
) -> requests.Response:
    """An HTTP request to the stand-in, with a bearer token when one is given."""
    headers = bearer(token) if token else {}
    return requests.request(method, api.url + path, headers=headers, timeout=5, **kwargs)


def assert_error(reply: requests.Response, status: int, message: str) -> dict[str, Any]:
    """Check ``reply`` is ``status`` with the platform's error object; return its details."""
    try:
        error = reply.json()["error"]
        shape = (
            reply.status_code,
            reply.headers.get("Content-Type"),
            error["status"],
            error["message"],
            isinstance(error["details"], dict),
        )
    except (ValueError, KeyError, TypeError):
        shape = None
    if shape != (status, "application/json", status, message, True):
        raise AssertionError(
            f"expected {status} {message!r} with an error object, got {reply.status_code}: "
            f"{reply.text[:300]}"
        )
    return dict(error["details"])


@pytest.fixture
def standin_seed() -> dict[str, Any]:
    return copy.deepcopy(SEED)


@pytest.fixture
def standin(standin_seed: dict[str, Any]) -> Iterator[StandIn]:
    """A running stand-in (``standin.url``), stopped after the test."""
    with StandIn(standin_seed) as api:
        yield api


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No API URL or secrets directory from the environment or an earlier configure()."""
    for name in ("SWX_API_URL", "CREDENTIALS_DIRECTORY", "_SECRETS_PATH"):
        monkeypatch.delenv(name, raising=False)
    swx.configure(None)
    secretstore.configure(None)
    yield
    swx.configure(None)
    secretstore.configure(None)
