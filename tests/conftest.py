"""Fixtures: a private mosquitto per session (and per test where a test restarts it), and the
real daemon as a subprocess.  Nothing here touches a broker already on the machine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.bridgeproc import EXAMPLES, TEST_HANDLERS, BridgeProcess
from tests.support.broker import Broker, free_port, mosquitto_available

if not mosquitto_available():  # pragma: no cover - make test installs it
    raise pytest.UsageError("mosquitto is not installed: run `make test`, which installs it")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker shared by tests that do not restart it; each test uses its own topics."""
    with Broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test, free to be killed and restarted."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """Topics unique to the calling test."""
    return "t/" + re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]


BridgeFactory = Callable[..., BridgeProcess]


@pytest.fixture
def make_bridge(tmp_path: Path, broker: Broker) -> Iterator[BridgeFactory]:
    """Build and start bridges; all are stopped at the end of the test."""
    started: list[BridgeProcess] = []

    def make(routes: list[dict[str, Any]], *, on: Broker | None = None, start: bool = True,
             handlers_dir: Path = TEST_HANDLERS, name: str = "bridge", env: dict[str, str] | None = None,
             args: list[str] | None = None, **sections: Any) -> BridgeProcess:
        b = on or broker
        config: dict[str, Any] = {
            "handlers_dir": str(handlers_dir),
            "mqtt": {"host": "127.0.0.1", "port": b.port, "client_id": f"{name}-{tmp_path.name}"[:60],
                     "reconnect_min_delay": 0.1, "reconnect_max_delay": 1.0},
            "replies": {"allowed_topics": ["replies/#"]},
            # Its own port: never the default 8082, which another bridge on the machine may hold.
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "routes": routes,
        }
        for key, value in sections.items():
            config[key] = {**config.get(key, {}), **value}
        proc = BridgeProcess(tmp_path / name, config, env=env or {}, args=args or [])
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.stop()


__all__ = ["EXAMPLES", "TEST_HANDLERS"]
