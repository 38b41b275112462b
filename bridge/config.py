"""Configuration: TOML validated once, at start, by pydantic models.

Every key is documented in ``docs/configuration.md``.  Relative paths are resolved against the
directory of the config file.  The process environment is read here and nowhere else
(:func:`environment`), so the rest of the code sees plain values.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_API_URL = "https://api.swx.altairone.com"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_filter(value: str) -> str:
    """Validate an MQTT topic filter (``+`` and ``#`` allowed as whole levels)."""
    if not value:
        raise ValueError("empty topic filter")
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be a whole, last level: {value!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level: {value!r}")
    return value


SHARED_PREFIX = "$share/"


def _check_share_group(value: str) -> str:
    if not value or any(c in value for c in "/+#\x00"):
        raise ValueError(f"a share group name is non-empty, without '/', '+' or '#': {value!r}")
    return value


def _check_route_topic(value: str) -> str:
    """A route's topic: a topic filter, or a shared subscription ``$share/<group>/<filter>``."""
    if value.startswith(SHARED_PREFIX) or value == SHARED_PREFIX.rstrip("/"):
        parts = value.split("/", 2)
        if len(parts) < 3 or not parts[2]:
            raise ValueError(f"a shared subscription is $share/<group>/<topic filter>: {value!r}")
        _check_share_group(parts[1])
        if parts[2].startswith(SHARED_PREFIX):
            raise ValueError(f"a shared subscription names one group: {value!r}")
        _check_filter(parts[2])
        return value
    return _check_filter(value)


class TlsConfig(_Model):
    """TLS to the broker. Server-name verification is on unless ``insecure`` is set."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class MqttConfig(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: Annotated[str, Field(min_length=1)] = "iot-bridge"
    # "auto": MQTT 5, or 3.1.1 when the broker refuses 5; 5 = MQTT v5 only, 4 = MQTT v3.1.1 only
    protocol: Literal["auto", 5, 4] = "auto"
    keepalive: Annotated[int, Field(ge=5, le=65535)] = 60
    session_expiry: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 86400  # MQTT's four-byte interval
    username: str | None = None
    password_secret: str | None = None  # name of the secret holding the password
    tls: TlsConfig | None = None
    reconnect_min_delay: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max_delay: Annotated[float, Field(gt=0)] = 30.0
    # Every route subscribes as $share/<share_group>/<topic>: bridges in one group split the load.
    share_group: str | None = None

    @field_validator("share_group")
    @classmethod
    def _share_group(cls, value: str | None) -> str | None:
        return None if value is None else _check_share_group(value)


class RepliesConfig(_Model):
    # Response topics a request may name (MQTT v5 Response Topic); others are refused.
    allowed_topics: list[str] = ["replies/#"]
    # Replies to QoS >= 1 requests finished while the broker is away are kept here.
    store: Path = Path("state/replies.db")

    @field_validator("allowed_topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        return [_check_filter(v) for v in value]


_PATH_SEGMENT = r"^[^/?#\s]+$"  # one URL path segment: no slash, query, fragment or blank


class ThingTarget(_Model):
    """``[routes.thing]``: the IoT Studio Thing whose properties a route writes.

    The credentials are named, not given: ``client_id_secret`` and ``client_secret_secret`` are
    the names of secrets (see ``[secrets]``) holding the OAuth2 client id and secret.
    """

    space: Annotated[str, Field(pattern=_PATH_SEGMENT)]
    category: Annotated[str, Field(pattern=_PATH_SEGMENT)] | None = None
    thing_id: Annotated[str, Field(pattern=_PATH_SEGMENT)]
    client_id_secret: Annotated[str, Field(min_length=1)]
    client_secret_secret: Annotated[str, Field(min_length=1)]
    scopes: Annotated[tuple[str, ...], Field(min_length=1)] = ("thing.update",)
    update_history: bool = True


_HANDLER = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?$"  # module[.sub][:function], inside handlers_dir


class RouteConfig(_Model):
    topic: str
    # Optional only when ``thing`` is set: the message payload itself is then written.
    handler: str | None = None
    thing: ThingTarget | None = None
    reply_topic: str | None = None
    qos: Literal[0, 1, 2] = 1
    timeout: Annotated[float, Field(gt=0)] = 30.0
    reply_format: Literal["json", "body"] = "json"
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _check_route_topic(value)

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str | None) -> str | None:
        if value is not None and not re.match(_HANDLER, value):
            raise ValueError(f"{value!r} must name a module in handlers_dir: \"module\", "
                             "\"package.module\" or \"module:function\" (no paths)")
        return value

    @model_validator(mode="after")
    def _handler_or_thing(self) -> "RouteConfig":
        if self.handler is None and self.thing is None:
            raise ValueError("a route needs a handler, a [routes.thing] target, or both")
        return self

    @field_validator("reply_topic")
    @classmethod
    def _reply_topic(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or value.startswith("$") or "+" in value or "#" in value:
            raise ValueError("a reply topic must be non-empty, without wildcards, not starting with $")
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"invalid template: {exc}") from None
        if any(name != "topic" or spec or conv for name, spec, conv in fields):
            raise ValueError("only {topic} may be used in the template")
        return value


class LimitsConfig(_Model):
    max_in_flight: Annotated[int, Field(ge=1, le=65535)] = 256
    max_payload: Annotated[int, Field(ge=0)] = 1024 * 1024  # bytes; larger requests get 413
    # Payload bytes of the requests in flight; above it the bridge stops reading requests.
    max_in_flight_bytes: Annotated[int, Field(ge=1)] = 32 * 1024 * 1024
    shutdown_grace: Annotated[float, Field(ge=0)] = 10.0


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    function_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_payloads: bool = False
    access: bool = False  # one line per request: topic, function, status, duration


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkersConfig(_Model):
    """``[workers]``: where functions run (see docs/functions.md)."""

    mode: Literal["process", "thread"] = "process"
    processes: Annotated[int, Field(ge=1, le=256)] = Field(default_factory=_cpus)
    memory_limit_mb: Annotated[int, Field(ge=0)] = 512  # per worker process; 0 = no limit
    load_timeout: Annotated[float, Field(gt=0)] = 90.0  # seconds for workers to import the handlers


class IotStudioConfig(_Model):
    """``[iot_studio]``: the REST API client (see ``docs/iot-studio.md``)."""

    api_url: str | None = None
    timeout: Annotated[float, Field(gt=0)] = 10.0  # seconds, per HTTP request
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4  # per call, first try included
    backoff_initial: Annotated[float, Field(ge=0)] = 0.5  # seconds before the first retry
    backoff_max: Annotated[float, Field(ge=0)] = 10.0  # cap of one exponential wait
    retry_after_max: Annotated[float, Field(ge=0)] = 30.0  # cap on an honoured Retry-After
    token_refresh_margin: Annotated[float, Field(ge=0)] = 10.0  # renew this early (or 1/4 life)


class OutboxConfig(_Model):
    """``[outbox]``: the durable queue of Thing property updates waiting for the API."""

    path: Path = Path("state/outbox.db")
    max_age: Annotated[float, Field(gt=0)] = 86400.0  # seconds; older updates are dropped
    max_items: Annotated[int, Field(ge=1)] = 10000  # when full, the oldest update is dropped
    retry_initial: Annotated[float, Field(gt=0)] = 1.0  # first redelivery delay, seconds
    retry_max: Annotated[float, Field(gt=0)] = 60.0  # cap of the redelivery delay
    fsync: bool = False  # true: every enqueue survives power loss too (slower on SD cards)


class SecretsConfig(_Model):
    dir: Path | None = None


def split_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) as ``(host, port)``; raise ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:8082, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class HttpConfig(_Model):
    """``[http]``: health, metrics, the status page and HTTP invocation (docs/operations.md)."""

    listen: str = "127.0.0.1:8082"  # "" turns HTTP off
    token_secret: Annotated[str, Field(min_length=1)] | None = None  # name of a secret
    callback_timeout: Annotated[float, Field(gt=0)] = 10.0  # seconds per X-Callback-Url attempt
    callback_attempts: Annotated[int, Field(ge=1, le=20)] = 5  # first try included

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            split_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on, or None when HTTP is off."""
        return split_listen(self.listen) if self.listen else None

    def check(self) -> None:
        """Refuse to listen off loopback without a token: anyone reaching the port could run
        every function.  Raises :class:`ConfigError` naming ``http.token_secret``."""
        if self.listen and not is_loopback(split_listen(self.listen)[0]) and self.token_secret is None:
            raise ConfigError(f"http.token_secret: required when http.listen ({self.listen!r}) is not a "
                              "loopback address; name the secret holding the bearer token",
                              key="http.token_secret")


class BridgeConfig(_Model):
    handlers_dir: Path = Path("handlers")
    mqtt: MqttConfig = MqttConfig()
    routes: list[RouteConfig] = []
    replies: RepliesConfig = RepliesConfig()
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    workers: WorkersConfig = WorkersConfig()
    iot_studio: IotStudioConfig = IotStudioConfig()
    outbox: OutboxConfig = OutboxConfig()
    secrets: SecretsConfig = SecretsConfig()
    http: HttpConfig = HttpConfig()
    # Where the config file lives; relative paths above are resolved against it.
    base_dir: Path = Field(default=Path("."), exclude=True)
    # ``iot-bridge run --state-dir``: relative state files (reply store, outbox) go here instead.
    state_dir: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _resolve_paths(self) -> "BridgeConfig":
        base = self.base_dir
        state = self.state_dir or base
        object.__setattr__(self, "handlers_dir", (base / self.handlers_dir).resolve())
        # A copy, not an in-place edit: the default OutboxConfig() is shared by every config.
        outbox = self.outbox.model_copy(update={"path": (state / self.outbox.path).resolve()})
        object.__setattr__(self, "outbox", outbox)
        replies = self.replies.model_copy(update={"store": (state / self.replies.store).resolve()})
        object.__setattr__(self, "replies", replies)
        if self.secrets.dir is not None:
            object.__setattr__(self.secrets, "dir", (base / self.secrets.dir).resolve())
        if self.mqtt.tls is not None:
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(self.mqtt.tls, name)
                if path is not None:
                    object.__setattr__(self.mqtt.tls, name, (base / path).resolve())
        return self


def _key_of(error: dict[str, Any], data: dict[str, Any]) -> str:
    """Render a pydantic error location as a TOML key, e.g. ``routes[1].handler``."""
    parts: list[str] = []
    for item in error["loc"]:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def parse_config(data: dict[str, Any], base_dir: Path, *, instance: str | None = None,
                 state_dir: Path | None = None) -> BridgeConfig:
    """Validate a config mapping; raise :class:`ConfigError` naming every bad key.

    ``instance`` (one of several bridges run from one file) is appended to ``mqtt.client_id``
    as ``-<instance>``; ``state_dir`` is where relative state files go (see BridgeConfig)."""
    if instance is not None and not _INSTANCE.fullmatch(instance):
        raise ConfigError(f"--instance: {instance!r} is not 1-64 letters, digits, '_', '.', '@' or '-'",
                          key="--instance")
    try:
        config = BridgeConfig.model_validate({**data, "base_dir": base_dir, "state_dir": state_dir})
    except ValidationError as exc:
        problems = [f"{_key_of(e, data)}: {e['msg']}" for e in exc.errors()]
        first = _key_of(exc.errors()[0], data)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), key=first) from exc
    seen: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        if route.topic in seen:
            key = f"routes[{i}].topic"
            raise ConfigError(f"invalid configuration:\n  {key}: {route.topic!r} is already the topic of "
                              f"routes[{seen[route.topic]}]; only one route would run", key=key)
        seen[route.topic] = i
    config.http.check()
    if instance is not None:
        mqtt = config.mqtt.model_copy(update={"client_id": f"{config.mqtt.client_id}-{instance}"})
        config = config.model_copy(update={"mqtt": mqtt})
    return config


def load_config(path: str | os.PathLike[str], *, instance: str | None = None,
                state_dir: str | os.PathLike[str] | None = None) -> BridgeConfig:
    """Read and validate the TOML file at ``path`` (``instance``, ``state_dir``: see
    :func:`parse_config`; a relative ``state_dir`` is taken from the working directory)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    for hidden in ("base_dir", "state_dir"):
        if hidden in data:
            raise ConfigError(f"{hidden}: unknown key", key=hidden)
    return parse_config(data, path.parent.resolve(), instance=instance,
                        state_dir=Path(state_dir).resolve() if state_dir is not None else None)
