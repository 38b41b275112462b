"""Real HTTP for tests: a client for the bridge's endpoint, a callback server, metric parsing."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_for


def get(url: str, **kw: Any) -> requests.Response:
    return requests.get(url, timeout=kw.pop("timeout", 10), **kw)


def wait_health(base: str, status: int, timeout: float = 15.0) -> requests.Response:
    """Poll ``/__/health`` until it answers ``status``; return that answer."""
    def probe() -> list[requests.Response] | None:
        try:
            answer = get(base + "/__/health", timeout=2)
        except requests.ConnectionError:
            return None
        return [answer] if answer.status_code == status else None  # a Response >= 400 is falsy

    return wait_for(probe, timeout, f"/__/health answering {status}")[0]


def samples(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, keyed by (name, labels)."""
    text = get(base + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The value of one sample (0 when the series does not exist yet)."""
    return all_samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CallbackServer:
    """A real HTTP server on loopback that records every POST it receives."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> "CallbackServer":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.received.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/done?key=abc"

    def wait(self, count: int = 1, timeout: float = 15.0) -> list[Received]:
        return wait_for(lambda: self.received if len(self.received) >= count else None, timeout,
                        f"{count} callback(s)")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
