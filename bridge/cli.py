"""Command line: ``iot-bridge run | check | invoke | new | dev-api``.

Exit status: 0 success; 1 a problem found (``check``) or an error reply (``invoke``, status
>= 400); 2 an invalid configuration or command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from . import logs
from .codec import reply_document
from .config import BridgeConfig, load_config
from .environment import environment
from .contract import Context, Event
from .errors import BridgeError, ConfigError, HandlerLoadError
from .functions import Unavailable, load_function, respond, respond_async
from .logs import current_function

DEFAULT_CONFIG = "config/bridge.toml"


def _load(path: str, **options: str | None) -> BridgeConfig:
    try:
        return load_config(path, **options)
    except ConfigError as exc:
        print(f"iot-bridge: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from .daemon import Bridge  # the transport is imported only when serving

    options = {"instance": args.instance, "state_dir": args.state_dir}
    config = _load(args.config, **options)
    logs.setup(config.logging.level, config.logging.function_level)
    try:
        bridge = Bridge(config, args.config, **options)
    except ConfigError as exc:
        print(f"iot-bridge: {exc}", file=sys.stderr)
        return 2
    try:
        # uvloop: the same asyncio API at about a tenth less CPU per message for the daemon.
        # Functions' own async code runs on standard asyncio loops (bridge.workers.local).
        code = uvloop.run(bridge.run())
    except ConfigError as exc:  # found only once used (e.g. certificates that do not load)
        logging.getLogger("bridge").error("%s", exc)
        code = 2
    except BridgeError as exc:
        logging.getLogger("bridge").error("%s", exc)
        code = 1
    # Exit now: a thread a function started (not a daemon thread) must not keep the service
    # from stopping, and interpreter teardown would wait for it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_check(args: argparse.Namespace) -> int:
    from .workers.probe import probe

    config = _load(args.config)
    logs.setup("WARNING", "WARNING")
    problems: list[str] = []
    try:
        functions = asyncio.run(probe(config, environment().hostname))
    except BridgeError as exc:
        print(f"iot-bridge: {exc}", file=sys.stderr)
        return 1
    for i, route in enumerate(config.routes):
        found = functions.get(route.handler) if route.handler is not None else None
        if isinstance(found, Unavailable):
            problems.append(f"routes[{i}].handler ({route.handler}): {found.reason}")
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) in {args.config}")
        return 1
    print(f"{args.config}: {len(config.routes)} route(s), every function imports")
    return 0


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def cmd_invoke(args: argparse.Namespace) -> int:
    config = _load(args.config)
    logs.setup(config.logging.level, config.logging.function_level)
    try:
        function = load_function(config.handlers_dir, args.handler)
    except HandlerLoadError as exc:
        print(f"iot-bridge: {exc}", file=sys.stderr)
        return 2
    body = Path(args.body_file).read_bytes() if args.body_file else (args.body or "").encode()
    topic = args.topic or f"functions/python/{args.handler.partition(':')[0]}"
    headers = [*args.header, ("X-Topic", topic), ("Content-Length", str(len(body)))]
    event = Event(body, method=args.method.upper(), path="/" + topic, headers=headers,
                  query=args.query or "", topic=topic)
    context = Context(environment().hostname)
    current_function.set(function.name)
    if function.is_async:
        response = asyncio.run(respond_async(function, event, context))
    else:
        response = respond(function, lambda: function.call(event, context))
    current_function.set(None)
    print(json.dumps(reply_document(response), ensure_ascii=False, indent=2))
    return 0 if response.status < 400 else 1


def cmd_new(args: argparse.Namespace) -> int:
    from .dev import scaffold

    config = _load(args.config)
    try:
        print(scaffold.create(Path(args.config), config, args.name, openfaas=args.openfaas, is_async=args.is_async))
    except ConfigError as exc:
        print(f"iot-bridge: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_dev_api(args: argparse.Namespace) -> int:
    from .iotstudio import standin

    return standin.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iot-bridge", description="Run Python functions on MQTT messages.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config file (default {DEFAULT_CONFIG})")
        return p

    run = with_config(sub.add_parser("run", help="serve: subscribe, run functions, publish replies"))
    run.add_argument("--instance", help="one of several bridges run from one config: appended to "
                                        "mqtt.client_id as -INSTANCE (the systemd unit iot-bridge@.service)")
    run.add_argument("--state-dir", help="directory for relative state files (replies.store, outbox.path) "
                                         "instead of the config file's directory")
    run.set_defaults(func=cmd_run)
    with_config(sub.add_parser("check", help="validate the config and import every function")).set_defaults(func=cmd_check)
    inv = with_config(sub.add_parser("invoke", help="run one function once, without a broker"))
    inv.add_argument("handler", help='"module" or "module:function" in handlers_dir')
    body = inv.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body text")
    body.add_argument("--body-file", help="read the request body from this file")
    inv.add_argument("--method", default="POST", choices=["GET", "POST", "PUT", "PATCH", "DELETE"], type=str.upper)
    inv.add_argument("--header", action="append", default=[], type=_header, metavar="NAME=VALUE")
    inv.add_argument("--query", help="query string, e.g. 'name=x&n=1'")
    inv.add_argument("--topic", help="topic the request arrives on (default functions/python/HANDLER)")
    inv.set_defaults(func=cmd_invoke)
    new = with_config(sub.add_parser("new", help="write handlers/NAME.py and add a route for it to the config"))
    new.add_argument("name", help="module name of the new function")
    new.add_argument("--openfaas", action="store_true", help="OpenFaaS python3-http style: handle(event, context)")
    new.add_argument("--async", dest="is_async", action="store_true", help="an async def function")
    new.set_defaults(func=cmd_new)
    dev = sub.add_parser("dev-api", help="serve a local IoT Studio API stand-in", add_help=False)
    dev.add_argument("rest", nargs=argparse.REMAINDER)
    dev.set_defaults(func=cmd_dev_api)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
