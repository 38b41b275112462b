"""Configuration validation (bridge.config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.config import BridgeConfig, load_config, parse_config
from bridge.errors import ConfigError


def _route(**kw):
    return {"topic": "sensors/#", "handler": "echo", **kw}


def _bad(data, base: Path = Path("/srv/bridge")) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base)
    return info.value


def _write(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and valid configs -----------------------------------------------------------------

def test_empty_config_has_defaults_resolved_against_the_base_dir(tmp_path):
    config = parse_config({}, tmp_path)
    assert isinstance(config, BridgeConfig)
    assert config.handlers_dir == tmp_path / "handlers"
    assert config.outbox.path == tmp_path / "state" / "outbox.db"
    assert config.routes == []
    assert config.mqtt.host == "127.0.0.1" and config.mqtt.port == 1883 and config.mqtt.protocol == "auto"
    assert config.replies.allowed_topics == ["replies/#"]
    assert config.limits.max_payload == 1024 * 1024
    assert config.logging.function_level == "INFO"
    assert config.secrets.dir is None


def test_defaults_are_not_shared_between_configs(tmp_path):
    a = parse_config({}, tmp_path / "a")
    b = parse_config({}, tmp_path / "b")
    assert a.outbox.path == tmp_path / "a" / "state" / "outbox.db"
    assert b.outbox.path == tmp_path / "b" / "state" / "outbox.db"


def test_route_defaults():
    route = parse_config({"routes": [_route()]}, Path("/srv")).routes[0]
    assert (route.topic, route.handler, route.reply_topic, route.qos, route.timeout, route.reply_format,
            route.concurrency, route.thing) == ("sensors/#", "echo", None, 1, 30.0, "json", 8, None)


def test_a_route_with_only_a_thing_target_is_valid():
    thing = {"space": "s1", "thing_id": "01H", "client_id_secret": "cid", "client_secret_secret": "csec"}
    route = parse_config({"routes": [{"topic": "t", "thing": thing}]}, Path("/srv")).routes[0]
    assert route.handler is None
    assert route.thing is not None and route.thing.scopes == ("thing.update",)


@pytest.mark.parametrize("template", ["replies/{topic}", "replies/fixed", "r/{{literal}}/{topic}/x"])
def test_valid_reply_topic_templates(template):
    assert parse_config({"routes": [_route(reply_topic=template)]}, Path("/srv")).routes[0].reply_topic == template


# -- errors name the key ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data, key",
    [
        ({"hots": 1}, "hots"),
        ({"mqtt": {"hots": "x"}}, "mqtt.hots"),
        ({"routes": [_route(handlr="x")]}, "routes[0].handlr"),
        ({"mqtt": {"port": "x"}}, "mqtt.port"),
        ({"mqtt": {"port": 0}}, "mqtt.port"),
        ({"mqtt": {"port": 65536}}, "mqtt.port"),
        ({"mqtt": {"protocol": 3}}, "mqtt.protocol"),
        ({"mqtt": {"session_expiry": 2**32}}, "mqtt.session_expiry"),  # MQTT's interval has four bytes
        ({"mqtt": {"tls": {"insecure": "maybe"}}}, "mqtt.tls.insecure"),
        ({"routes": "sensors/#"}, "routes"),
        ({"routes": [_route(), _route(qos=3)]}, "routes[1].qos"),
        ({"routes": [_route(qos="1")]}, "routes[0].qos"),
        ({"routes": [_route(timeout=0)]}, "routes[0].timeout"),
        ({"routes": [_route(concurrency=0)]}, "routes[0].concurrency"),
        ({"routes": [_route(reply_format="xml")]}, "routes[0].reply_format"),
        ({"routes": [_route(handler="")]}, "routes[0].handler"),
        ({"routes": [{"topic": "a"}]}, "routes[0]"),
        ({"logging": {"level": "TRACE"}}, "logging.level"),
        ({"limits": {"max_payload": -1}}, "limits.max_payload"),
        ({"routes": [{"topic": "a", "thing": {"space": "a/b", "thing_id": "x", "client_id_secret": "c",
                                               "client_secret_secret": "d"}}]}, "routes[0].thing.space"),
    ],
)
def test_invalid_values_name_the_key(data, key):
    err = _bad(data)
    assert err.key == key
    assert f"\n  {key}: " in str(err)
    assert str(err).startswith("invalid configuration:")


@pytest.mark.parametrize("topic", ["", "a/#/b", "a#", "#/a", "a+", "a/b+/c", "+a"])
def test_bad_route_topic_filter(topic):
    err = _bad({"routes": [_route(topic=topic)]})
    assert err.key == "routes[0].topic"


@pytest.mark.parametrize("topic", ["#", "+", "a/+/b", "a/#", "+/+/#", "$SYS/#"])
def test_good_route_topic_filter(topic):
    assert parse_config({"routes": [_route(topic=topic)]}, Path("/srv")).routes[0].topic == topic


def test_bad_allowed_reply_filter():
    err = _bad({"replies": {"allowed_topics": ["replies/#", "a+"]}})
    assert err.key == "replies.allowed_topics"
    assert "'+' must be a whole level: 'a+'" in str(err)


@pytest.mark.parametrize("template", ["replies/+", "replies/#", "replies/{topic}/#"])
def test_reply_topic_with_a_wildcard(template):
    err = _bad({"routes": [_route(reply_topic=template)]})
    assert err.key == "routes[0].reply_topic"
    assert "a reply topic must be non-empty, without wildcards, not starting with $" in str(err)


@pytest.mark.parametrize("template", ["replies/{name}", "replies/{0}", "replies/{}", "replies/{topic!s}"])
def test_reply_topic_with_an_unknown_placeholder(template):
    err = _bad({"routes": [_route(reply_topic=template)]})
    assert err.key == "routes[0].reply_topic"
    assert "only {topic} may be used in the template" in str(err)


@pytest.mark.parametrize("template", ["replies/{topic.x}", "replies/{topic[0]}", "replies/{topic!r}",
                                      "replies/{topic:>20}", "replies/{topic.__class__}"])
def test_reply_topic_placeholder_must_be_a_bare_topic(template):
    # Attribute, index, conversion and format spec would all change the topic (or raise).
    err = _bad({"routes": [_route(reply_topic=template)]})
    assert err.key == "routes[0].reply_topic"
    assert "only {topic} may be used in the template" in str(err)


@pytest.mark.parametrize("template", ["replies/{topic", "replies/topic}"])
def test_reply_topic_malformed_template(template):
    err = _bad({"routes": [_route(reply_topic=template)]})
    assert err.key == "routes[0].reply_topic"
    assert "invalid template: " in str(err)


@pytest.mark.parametrize("template", ["", "$SYS/replies/{topic}", "$share/g/r"])
def test_reply_topic_that_can_never_be_published_is_refused(template):
    err = _bad({"routes": [_route(reply_topic=template)]})
    assert err.key == "routes[0].reply_topic"
    assert "a reply topic must be non-empty, without wildcards, not starting with $" in str(err)


def test_every_bad_key_is_listed_and_the_first_is_the_key():
    err = _bad({"mqtt": {"port": "x"}, "routes": [_route(qos=5)], "bogus": True})
    text = str(err)
    assert "mqtt.port:" in text and "routes[0].qos:" in text and "bogus:" in text
    assert err.key == "mqtt.port"


# -- load_config --------------------------------------------------------------------------------

def test_relative_paths_are_resolved_against_the_config_file_dir(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = _write(conf_dir, """
handlers_dir = "fns"
[secrets]
dir = "../secrets"
[outbox]
path = "var/outbox.db"
[mqtt.tls]
ca_file = "ca.pem"
""")
    config = load_config(path)
    assert config.handlers_dir == conf_dir / "fns"
    assert config.secrets.dir == tmp_path / "secrets"
    assert config.outbox.path == conf_dir / "var" / "outbox.db"
    assert config.mqtt.tls is not None and config.mqtt.tls.ca_file == conf_dir / "ca.pem"
    assert config.handlers_dir.is_absolute()


def test_relative_config_path_is_resolved_too(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    _write(tmp_path / "conf", 'handlers_dir = "h"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config("conf/bridge.toml").handlers_dir == tmp_path / "conf" / "h"


def test_absolute_handlers_dir_is_kept(tmp_path):
    target = tmp_path / "abs-handlers"
    path = _write(tmp_path, f'handlers_dir = "{target}"\n')
    assert load_config(path).handlers_dir == target


def test_load_config_reads_routes(tmp_path):
    path = _write(tmp_path, """
[[routes]]
topic = "sensors/+/temp"
handler = "thermo:handle_async"
reply_topic = "replies/{topic}"
qos = 0
reply_format = "body"
""")
    route = load_config(path).routes[0]
    assert (route.topic, route.handler, route.reply_topic, route.qos, route.reply_format) == (
        "sensors/+/temp", "thermo:handle_async", "replies/{topic}", 0, "body")


def test_load_config_error_names_the_key(tmp_path):
    path = _write(tmp_path, '[[routes]]\ntopic = "a"\nhandler = "h"\nqos = 7\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "routes[0].qos"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"config file not found: {tmp_path / 'nope.toml'}"


def test_invalid_toml(tmp_path):
    path = _write(tmp_path, "routes = [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path} is not valid TOML:")


def test_non_utf8_config_file(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_bytes(b'handlers_dir = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"cannot read config file {path}:")


def test_base_dir_is_not_a_config_key(tmp_path):
    path = _write(tmp_path, 'base_dir = "/"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "base_dir"


def test_config_is_frozen(tmp_path):
    config = parse_config({"routes": [_route()]}, tmp_path)
    with pytest.raises(ValidationError):
        config.routes[0].qos = 2  # type: ignore[misc]
    assert config.routes[0].qos == 1


# -- shared subscriptions, several bridges from one file --------------------------------------------

@pytest.mark.parametrize("topic, message", [
    ("$share", "a shared subscription is $share/<group>/<topic filter>"),
    ("$share/g", "a shared subscription is $share/<group>/<topic filter>"),
    ("$share/g/", "a shared subscription is $share/<group>/<topic filter>"),
    ("$share//a", "a share group name is non-empty, without '/', '+' or '#'"),
    ("$share/g+/a", "a share group name is non-empty, without '/', '+' or '#'"),
    ("$share/#/a", "a share group name is non-empty, without '/', '+' or '#'"),
    ("$share/g/$share/h/a", "a shared subscription names one group"),
])
def test_a_malformed_shared_subscription_names_the_key(topic, message):
    err = _bad({"routes": [_route(), _route(topic=topic)]})
    assert err.key == "routes[1].topic"
    assert message in str(err)


def test_share_group_is_a_group_name_and_route_topics_may_name_their_own():
    topics = ["$share/g/a/+", "$share/g/#", "$share/gw-17.x/spaces/+/things/#", "plain/+"]
    config = parse_config({"mqtt": {"share_group": "gateway-17"}, "routes": [_route(topic=t) for t in topics]},
                          Path("/srv"))
    assert config.mqtt.share_group == "gateway-17"
    assert [r.topic for r in config.routes] == topics
    assert parse_config({}, Path("/srv")).mqtt.share_group is None
    for bad in ("", "a/b", "g+", "g#"):
        err = _bad({"mqtt": {"share_group": bad}})
        assert err.key == "mqtt.share_group"
        assert "a share group name is non-empty, without '/', '+' or '#'" in str(err)


def test_an_instance_extends_the_client_id_and_a_state_dir_takes_relative_state_files(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text('[mqtt]\nclient_id = "gw"\n[outbox]\npath = "/abs/outbox.db"\n')
    config = load_config(path, instance="2", state_dir=tmp_path / "state-2")
    assert config.mqtt.client_id == "gw-2"
    assert config.replies.store == tmp_path / "state-2" / "state" / "replies.db"
    assert config.outbox.path == Path("/abs/outbox.db")  # absolute paths stay
    plain = load_config(path)
    assert (plain.mqtt.client_id, plain.replies.store) == ("gw", tmp_path / "state" / "replies.db")
    path.write_text('state_dir = "/tmp"\n')  # only the command line sets it
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "state_dir"


@pytest.mark.parametrize("instance", ["", "a b", "a/b", "-x", "x" * 65])
def test_a_bad_instance_name_is_refused(tmp_path, instance):
    path = tmp_path / "bridge.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path, instance=instance)
    assert info.value.key == "--instance"


def test_two_routes_with_the_same_topic_filter_exit_2_naming_the_second():
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [{"topic": "a/+", "handler": "x"}, {"topic": "b", "handler": "y"},
                                 {"topic": "a/+", "handler": "z"}]}, Path("."))
    assert info.value.key == "routes[2].topic"
    assert "already the topic of routes[0]" in str(info.value)


@pytest.mark.parametrize("handler", ["/srv/elsewhere/evil", "../outside", "pkg/mod", "a:b:c", "mod.", "1mod"])
def test_a_handler_that_is_not_a_module_name_in_handlers_dir_is_refused(handler):
    with pytest.raises(ConfigError) as info:
        parse_config({"routes": [{"topic": "a", "handler": handler}]}, Path("."))
    assert info.value.key == "routes[0].handler"
    assert "no paths" in str(info.value)


def test_workers_defaults_and_limits():
    config = parse_config({}, Path("."))
    assert (config.workers.mode, config.workers.memory_limit_mb) == ("process", 512)
    assert config.workers.processes == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError) as info:
        parse_config({"workers": {"mode": "fork"}}, Path("."))
    assert info.value.key == "workers.mode"
