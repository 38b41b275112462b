"""The few process-environment values the bridge honours, read in one place."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Environment(BaseModel):
    """The few process-environment values the bridge and its helper packages honour."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    hostname: str = "localhost"
    swx_api_url: str | None = None
    credentials_directory: Path | None = None  # systemd LoadCredential=
    secrets_path: Path | None = None  # IoT Studio's own runner (_SECRETS_PATH)
    mqtt_broker: str | None = None  # used by the example publisher when no config is loaded
    notify_socket: str | None = None  # systemd Type=notify
    watchdog_usec: int | None = None


def environment() -> Environment:
    """Read the process environment, once per call, into an :class:`Environment`."""
    env = os.environ
    return Environment(
        hostname=env.get("HOSTNAME") or socket.gethostname() or "localhost",
        swx_api_url=env.get("SWX_API_URL") or None,
        credentials_directory=env.get("CREDENTIALS_DIRECTORY") or None,
        secrets_path=env.get("_SECRETS_PATH") or None,
        mqtt_broker=env.get("MQTT_BROKER") or None,
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        watchdog_usec=int(env["WATCHDOG_USEC"]) if env.get("WATCHDOG_USEC", "").isdigit() else None,
    )
