"""What a function may ask about the bridge running it (``from bridge.runtime import ...``)."""

from __future__ import annotations

from .config import BridgeConfig
from .environment import environment

_config: BridgeConfig | None = None


def configure(config: BridgeConfig) -> None:
    """Point what functions import (this module, function.secrets, swx) at ``config``.

    Called where functions run, before they are imported (they may read it at import): by
    the daemon in ``thread`` mode, by each worker process in ``process`` mode.
    """
    import swx

    from . import secretstore

    global _config
    _config = config
    secretstore.configure(config.secrets.dir)
    swx.configure(config.iot_studio.api_url)


def config() -> BridgeConfig | None:
    """The running bridge's configuration, or None outside the bridge."""
    return _config


def broker_address() -> tuple[str, int]:
    """The MQTT broker the bridge uses; else ``MQTT_BROKER`` (host[:port]); else 127.0.0.1:1883."""
    if _config is not None:
        return _config.mqtt.host, _config.mqtt.port
    value = environment().mqtt_broker or "127.0.0.1"
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return (host or value), int(port) if port.isdigit() else 1883
