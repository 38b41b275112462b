"""``iot-bridge new NAME [--openfaas] [--async]``: a new function and its route.

Writes ``handlers/NAME.py`` from the platform's skeleton of that style, appends a
``[[routes]]`` table for it to the config (topic ``functions/python/NAME``, reply topic
``{topic}/reply``; the file's comments stay as they are), and says how to call it.  Nothing
is written when the name is taken or the result would not validate.  Under ``make run`` the
watcher picks both files up and the function answers at once.
"""

from __future__ import annotations

import keyword
import tomllib
from pathlib import Path

from ..config import BridgeConfig, parse_config
from ..errors import ConfigError
from ..functions import module_path
from ..routing import matches

# The skeletons of the seed documents (IoT Studio's Python template, OpenFaaS python3-http).
SKELETONS = {
    ("iot-studio", False): '''\
def handle(req):
    return {
        "status_code": 200,
        "body": req.body.decode("utf-8"),
    }
''',
    ("iot-studio", True): '''\
import asyncio


async def handle_async(req):
    # Asynchronous operation, such as waiting for an external API response
    await asyncio.sleep(1)
    return {
        "status_code": 200,
        "body": f"Asynchronous response: {req.body.decode('utf-8')}",
    }
''',
    ("openfaas", False): '''\
def handle(event, context):
    return {
        "statusCode": 200,
        "body": "You said: " + event.body.decode("utf-8"),
    }
''',
    ("openfaas", True): '''\
async def handle(event, context):
    return {
        "statusCode": 200,
        "body": "You said: " + event.body.decode("utf-8"),
    }
''',
}


def route_table(name: str) -> str:
    return f'''
[[routes]]
topic = "functions/python/{name}"
handler = "{name}"
reply_topic = "{{topic}}/reply"
qos = 1
'''


def create(config_path: Path, config: BridgeConfig, name: str, *, openfaas: bool, is_async: bool) -> str:
    """Write the function and its route; return what to tell the user.  Raises ConfigError."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(f"{name!r} is not a valid module name (letters, digits, _; not a keyword)")
    topic = f"functions/python/{name}"
    if module_path(config.handlers_dir, name) is not None:
        raise ConfigError(f"{config.handlers_dir / name}.py already exists")
    if any(r.handler == name or r.topic == topic for r in config.routes):
        raise ConfigError(f"{config_path} already has a route for {name!r} or the topic {topic}")
    text = config_path.read_text(encoding="utf-8")
    updated = text.rstrip("\n") + "\n" + route_table(name)
    parse_config(tomllib.loads(updated), config_path.parent.resolve())  # validates before writing
    handler = config.handlers_dir / f"{name}.py"
    handler.parent.mkdir(parents=True, exist_ok=True)
    handler.write_text(SKELETONS[("openfaas" if openfaas else "iot-studio", is_async)], encoding="utf-8")
    config_path.write_text(updated, encoding="utf-8")
    return usage(config, name, handler, config_path)


def usage(config: BridgeConfig, name: str, handler: Path, config_path: Path) -> str:
    topic = f"functions/python/{name}"
    port = f" -p {config.mqtt.port}" if config.mqtt.port != 1883 else ""
    host = f" -h {config.mqtt.host}" if config.mqtt.host not in ("127.0.0.1", "localhost") else ""
    lines = [f"wrote {handler}", f"added a route for {topic} to {config_path}", "", "Call it:"]
    response_topic = f"replies/{name}"
    if any(matches(f, response_topic) for f in config.replies.allowed_topics):
        lines.append(f"  mosquitto_rr -V 5{host}{port} -t {topic} -e {response_topic} -m hi -W 5")
    else:
        lines.append(f"  mosquitto_sub{host}{port} -t {topic}/reply -v &   # replies.allowed_topics has no replies/#")
        lines.append(f"  mosquitto_pub{host}{port} -t {topic} -m hi")
    if config.http.listen:
        auth = ' -H "Authorization: Bearer $TOKEN"' if config.http.token_secret else ""
        lines.append(f"  curl{auth} -d hi http://{config.http.listen}/invoke/{name}")
    lines.append("")
    lines.append("Under make run it answers now; otherwise reload a running bridge (kill -HUP <PID>).")
    return "\n".join(lines)
