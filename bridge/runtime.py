"""What a function may ask about the bridge running it (``from bridge.runtime import ...``)."""

from __future__ import annotations

from .config import BridgeConfig, environment

_config: BridgeConfig | None = None


def configure(config: BridgeConfig) -> None:
    """Called once by the daemon at start."""
    global _config
    _config = config


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
