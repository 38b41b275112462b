"""A local stand-in for the Altair IoT Studio REST API, for tests and offline development.

It implements the OAuth endpoints and the Thing properties, actions and events routes with
the platform's error object on every failure, and lets tests inject faults::

    api = StandIn({"clients": [{"id": "c", "secret": "s", "scopes": ["thing"]}],
                   "things": [{"space": "demo", "uid": "t1", "properties": {"temp": 20}}]})
    api.start()                      # api.url is http://127.0.0.1:<port>
    api.faults.fail_next(2, status=503)
    ...
    api.stop()

Run alone with ``iot-bridge dev-api --port 8080 --config seed.toml``; a separate process is
driven over HTTP through ``POST /__faults``, ``GET|DELETE /__requests`` and
``GET /__things/{space}/{thing}``.  See docs/iot-studio.md for every status it answers.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request

from bridge.errors import BridgeError
from bridge.iotstudio import standin_routes as routes
from bridge.iotstudio.standin_state import (
    Faults,
    Grant,
    RecordedRequest,
    Seed,
    ThingState,
    load_seed,
    parse_seed,
)

log = logging.getLogger(__name__)

__all__ = ["Faults", "RecordedRequest", "Seed", "StandIn", "main"]


class _Handler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), message % args)


class StandIn:
    """The stand-in: a WSGI application, its state, and a server thread to run it.

    ``seed`` is a :class:`Seed`, or a mapping of the same shape (see docs/iot-studio.md).
    ``clock`` (monotonic seconds) decides token expiry.
    """

    def __init__(
        self,
        seed: Seed | Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self.faults = Faults(self._expire_tokens)
        self.expires_in = 3600
        self.token_extra: dict[str, Any] = {}
        self.clients: dict[str, tuple[str, frozenset[str]]] = {}
        self.things: dict[tuple[str, str], ThingState] = {}
        self.grants: dict[str, Grant] = {}
        self.lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.load(seed if isinstance(seed, Seed) else parse_seed(seed or {}))

    # -- state, for tests -------------------------------------------------------------------

    def load(self, seed: Seed) -> None:
        """Add the seed's clients and things (replacing ones with the same id)."""
        with self.lock:
            self.expires_in = seed.expires_in
            self.token_extra = dict(seed.token_extra)
            for c in seed.clients:
                self.clients[c.id] = (c.secret, frozenset(c.scopes))
            for t in seed.things:
                self.things[(t.space, t.uid)] = ThingState(t.category, dict(t.properties))

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered so far (control routes excepted), oldest first."""
        with self.lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self.lock:
            self._requests.clear()

    def thing(self, space: str, uid: str) -> ThingState:
        """A copy of a Thing's state (properties, history, actions, events); KeyError if unknown."""
        with self.lock:
            state = self.things[(space, uid)]
            return ThingState(
                state.category,
                dict(state.properties),
                list(state.history),
                list(state.actions),
                list(state.events),
            )

    def properties(self, space: str, uid: str) -> dict[str, Any]:
        """A copy of a Thing's current properties."""
        return self.thing(space, uid).properties

    def issue_token(self, client_id: str, scopes: list[str] | None = None) -> str:
        """Mint a token for a seeded client without an HTTP round trip."""
        with self.lock:
            allowed = self.clients[client_id][1]
            granted = frozenset(scopes) if scopes is not None else allowed
            token = secrets.token_urlsafe(32)
            self.grants[token] = Grant(client_id, granted, self.clock() + self.expires_in)
            return token

    def token_status(self, token: str) -> str:
        """``"active"``, ``"expired"``, ``"revoked"`` or ``"unknown"``."""
        with self.lock:
            grant = self.grants.get(token)
            if grant is None:
                return "unknown"
            if grant.revoked:
                return "revoked"
            return "expired" if self.clock() >= grant.expires_at else "active"

    def _expire_tokens(self) -> None:
        with self.lock:
            for grant in self.grants.values():
                grant.expires_at = float("-inf")

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path.startswith("/__"):
            return routes.control(self, request)(environ, start_response)
        verdict = self.faults.take(request.method, request.path)
        if verdict.delay:
            self._stopping.wait(verdict.delay)
        if verdict.down == "close":
            self._record(request, 0)
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            # werkzeug's server treats this as a dropped connection and sends nothing.
            raise ConnectionResetError("stand-in is down")
        if verdict.down == "error":
            response = routes.error(503, "Service unavailable")
        elif verdict.failure is not None:
            response = routes.fault_response(verdict.failure)
        else:
            try:
                response = routes.dispatch(self, request)
            except Exception:
                # A bug here must still answer with the error object, not werkzeug's HTML page.
                log.exception("stand-in failed on %s %s", request.method, request.path)
                response = routes.error(500, "Internal server error")
        self._record(request, response.status_code)
        return response(environ, start_response)

    def _record(self, request: Request, status: int) -> None:
        body = None if request.path.startswith("/oauth2/") else routes.json_body(request)
        entry = RecordedRequest(
            request.method, request.path, status, request.query_string.decode("latin-1"), body
        )
        with self.lock:
            self._requests.append(entry)

    # -- server -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234`` (the port is known after start)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> StandIn:
        """Serve in a background thread; after :meth:`stop`, starts again on the same port."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = make_server(
            self.host, self.port, self, threaded=True, request_handler=_Handler
        )
        self.port = self._server.server_port
        # A short poll interval keeps stop() (and so each test using the stand-in) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="iot-studio-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; delayed requests are released at once."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``iot-bridge dev-api``: run the stand-in until interrupted."""
    parser = argparse.ArgumentParser(
        prog="iot-bridge dev-api", description="Run a local stand-in for the IoT Studio API."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    parser.add_argument("--config", help="seed file: clients, things (TOML, or JSON by .json)")
    args = parser.parse_args(argv)
    try:
        seed = load_seed(args.config) if args.config else Seed()
        api = StandIn(seed, host=args.host, port=args.port).start()
    except (BridgeError, OSError) as exc:
        print(f"iot-bridge dev-api: {exc}", file=sys.stderr)
        return 2
    if not seed.clients:
        print("iot-bridge dev-api: no clients seeded; token requests will fail", file=sys.stderr)
    print(f"IoT Studio stand-in listening on {api.url}", flush=True)
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
